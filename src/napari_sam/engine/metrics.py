"""Quality measures shared by tests, benchmarks, training and evaluation.

Every function takes numpy arrays in the (row, col) pixel frame: masks are bool
(H, W), label images int (H, W) with 0 the background.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    from napari_sam.engine.automatic.tiling import TileGrid


def match_instances(truth: np.ndarray, found: np.ndarray, iou_thresh: float = 0.5) -> tuple[int, int, int]:
    """(true positives, truth objects, found objects): pairs of labels with IoU >= ``iou_thresh``.

    With ``iou_thresh >= 0.5`` a pair is unique on both sides, so no assignment step is needed.

    Parameters
    ----------
    truth, found
        Label images of the same shape (int, 0 the background).
    iou_thresh
        Least IoU for a pair to count as a match.

    Returns
    -------
    true_pos, n_truth, n_found : int
        Matched pairs, objects in ``truth`` and objects in ``found``.

    Raises
    ------
    InputError
        ``iou_thresh`` is below 0.5, where matches need not be one-to-one.
    """
    if iou_thresh < 0.5:
        raise InputError("match_instances counts one-to-one matches only for iou_thresh >= 0.5.")
    t = np.asarray(truth).ravel().astype(np.int64)
    f = np.asarray(found).ravel().astype(np.int64)
    nt, nf = int(t.max(initial=0)), int(f.max(initial=0))
    area_t = np.bincount(t, minlength=nt + 1)
    area_f = np.bincount(f, minlength=nf + 1)
    both = (t > 0) & (f > 0)
    pairs, inter = np.unique(t[both] * (nf + 1) + f[both], return_counts=True)
    ti, fi = pairs // (nf + 1), pairs % (nf + 1)
    iou = inter / (area_t[ti] + area_f[fi] - inter)
    return int((iou >= iou_thresh).sum()), int((area_t[1:] > 0).sum()), int((area_f[1:] > 0).sum())


def f1_score(truth: np.ndarray, found: np.ndarray, iou_thresh: float = 0.5) -> float:
    """Instance F1 at ``iou_thresh`` (1.0 when both are empty).

    Parameters
    ----------
    truth, found
        Label images of the same shape (int, 0 the background).
    iou_thresh
        Least IoU for a match, at least 0.5 (see :func:`match_instances`).

    Returns
    -------
    float
        ``2 * matches / (n_truth + n_found)``, in [0, 1].

    Raises
    ------
    InputError
        ``iou_thresh`` is below 0.5.
    """
    true_pos, n_truth, n_found = match_instances(truth, found, iou_thresh)
    if n_truth + n_found == 0:
        return 1.0
    return 2.0 * true_pos / (n_truth + n_found)


def mask_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty).

    Parameters
    ----------
    prediction, target
        Masks of the same shape; converted to bool.

    Returns
    -------
    float
        IoU in [0, 1].
    """
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    union = np.logical_or(prediction, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, target).sum() / union)


def seam_statistics(truth: np.ndarray, found: np.ndarray, grid: TileGrid, iou_thresh: float = 0.5,
                    split_fraction: float = 0.2) -> dict[str, int]:
    """How objects that cross a seam fare compared with interior ones (for tests and benchmarks).

    A ground-truth object crosses a seam when its pixels lie in more than one core of
    ``grid``. It is found when a label of ``found`` matches it with IoU >= ``iou_thresh``,
    and split when two or more labels each cover at least ``split_fraction`` of it.

    Parameters
    ----------
    truth, found
        (H, W) label images (int, 0 the background) in the frame of ``grid``.
    grid
        The tiles the image was segmented in; the borders of their cores are the seams.
    iou_thresh
        Least IoU for a truth object to count as found.
    split_fraction
        Least share of a truth object's area a label must cover to count as one
        of its pieces.

    Returns
    -------
    dict of str to int
        Counts ``seam``, ``seam_found``, ``seam_split``, ``interior``,
        ``interior_found``, ``interior_split``.
    """
    row_borders = sorted({t.core[1] for t in grid})[:-1]
    col_borders = sorted({t.core[3] for t in grid})[:-1]
    core_row = np.searchsorted(row_borders, np.arange(truth.shape[0]), side="right")
    core_col = np.searchsorted(col_borders, np.arange(truth.shape[1]), side="right")
    cells = core_row[:, None] * (len(col_borders) + 1) + core_col[None, :]
    t = truth.ravel().astype(np.int64)
    f = found.ravel().astype(np.int64)
    c = cells.ravel()
    inside = t > 0
    n_truth = int(t.max(initial=0))
    # objects whose pixels fall in more than one core
    first_cell = np.full(n_truth + 1, -1)
    first_cell[t[inside]] = c[inside]
    crosses = np.zeros(n_truth + 1, dtype=bool)
    crosses[t[inside][c[inside] != first_cell[t[inside]]]] = True
    area_t = np.bincount(t, minlength=n_truth + 1)
    area_f = np.bincount(f, minlength=int(f.max(initial=0)) + 1)
    both = inside & (f > 0)
    pairs, inter = np.unique(np.stack([t[both], f[both]]), axis=1, return_counts=True)
    iou = inter / (area_t[pairs[0]] + area_f[pairs[1]] - inter)
    is_found = np.zeros(n_truth + 1, dtype=bool)
    is_found[pairs[0][iou >= iou_thresh]] = True
    big_pieces = np.bincount(pairs[0][inter >= split_fraction * area_t[pairs[0]]], minlength=n_truth + 1)
    is_split = big_pieces >= 2
    present = area_t > 0
    present[0] = False
    seam, interior = present & crosses, present & ~crosses
    return {
        "seam": int(seam.sum()),
        "seam_found": int((seam & is_found).sum()),
        "seam_split": int((seam & is_split).sum()),
        "interior": int(interior.sum()),
        "interior_found": int((interior & is_found).sum()),
        "interior_split": int((interior & is_split).sum()),
    }
