"""Does tiling change what is found? Agreement of two segmentations of the same pixels.

A model does not segment an object identically when it sees it at another place in its
window (its patches fall elsewhere, the context differs): its own TRANSLATION agreement,
measured by segmenting one window and the same window shifted, no tiling involved, is the
most a tiled run can be asked for. Tiling adds seams; its SHIFTED-GRID agreement compares
two tiled runs whose seams lie elsewhere (``tile_offset``). Seams cost nothing when the
shifted-grid agreement comes close to the model's own.

Both use :func:`label_agreement`: objects that lie inside the compared region (not touching
its border, where the two may be cut differently) count; an object agrees when the other
segmentation has one with IoU >= 0.5 there. All coordinates are (row, col) pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def inside_objects(labels: np.ndarray) -> np.ndarray:
    """``labels`` without the objects that touch its border (set to 0).

    Parameters
    ----------
    labels
        (H, W) int labels, 0 the background.

    Returns
    -------
    np.ndarray
        (H, W) copy with only the objects that do not touch the first or last row or column.
    """
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, edge[edge > 0]), 0, labels)


def label_agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(agreeing objects, objects) of two segmentations of the same (H, W) region.

    Parameters
    ----------
    a, b
        (H, W) int labels of the same pixels, 0 the background.

    Returns
    -------
    agreed, total : int
        Objects of either that do not touch the region's border (``total``), and of those the
        ones the other segmentation has too (IoU >= 0.5, ``agreed``); ``agreed / total`` is the
        agreement, 1.0 for identical segmentations.
    """
    from napari_sam.engine.metrics import match_instances

    agreed = total = 0
    for one, other in ((a, b), (b, a)):
        tp, n, _ = match_instances(inside_objects(one), other)
        agreed, total = agreed + tp, total + n
    return agreed, total


def translation_agreement(
    image: Any,
    segment_window: Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray],
    window_shape: Sequence[int], shift: int, origins: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """The model's own agreement with itself: each window against the same window moved by ``(shift, shift)``.

    Parameters
    ----------
    image
        (H, W) or (H, W, C) array-like.
    segment_window
        ``segment_window(pixels, window) -> (h, w) int labels`` for one window's pixels and its
        ``(row0, row1, col0, col1)`` place in the image (one model input, no tiling).
    window_shape
        (h, w) of every window.
    shift
        Pixels the second window is moved down and right; ``0 < shift < min(window_shape)``.
    origins
        (row, col) top-left corners of the first windows; the moved ones must lie inside the image.

    Returns
    -------
    agreed, total : int
        Summed over the pairs, on each pair's overlap (:func:`label_agreement`).
    """
    h, w = (int(v) for v in window_shape)
    agreed = total = 0
    for r, c in origins:
        first = (r, r + h, c, c + w)
        second = (r + shift, r + shift + h, c + shift, c + shift + w)
        a = segment_window(np.asarray(image[first[0] : first[1], first[2] : first[3]]), first)
        b = segment_window(np.asarray(image[second[0] : second[1], second[2] : second[3]]), second)
        pair = label_agreement(a[shift:, shift:], b[: h - shift, : w - shift])
        agreed, total = agreed + pair[0], total + pair[1]
    return agreed, total
