"""Writing objects into an instance label image (numpy in, numpy out; no napari).

Frames: a label plane is (H, W) in the data frame of the image being annotated;
masks are (H, W) bool in that frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def next_free_label(labels: npt.ArrayLike) -> int:
    """The smallest id above every id in ``labels`` (1 for an empty annotation).

    Parameters
    ----------
    labels
        Label image of any shape, 0 the background.

    Returns
    -------
    int
        ``labels.max() + 1``, or 1 when ``labels`` is empty or all background.
    """
    labels = np.asarray(labels)
    return int(labels.max(initial=0)) + 1 if labels.size else 1


def commit_pixels(
    existing_plane: np.ndarray, object_masks: Sequence[np.ndarray], first_id: int, paint_over: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and ids to write when committing masks into a label plane.

    Without ``paint_over`` only background (0) pixels are written. Where objects
    of one commit overlap, the earlier object keeps the pixel (with or without
    ``paint_over``).

    Parameters
    ----------
    existing_plane
        (H, W) labels currently in the plane; read only, never modified.
    object_masks
        One (H, W) bool mask per object, written with ids ``first_id``,
        ``first_id + 1``, ... in order.
    first_id
        Id of the first object.
    paint_over
        Also write over pixels that already carry a label.

    Returns
    -------
    rows, cols, values : np.ndarray
        Each (P,): the pixels to write and their ids (int64), ready for
        ``plane[rows, cols] = values``.

    Raises
    ------
    ValueError
        A mask's shape differs from ``existing_plane``'s.
    """
    existing_plane = np.asarray(existing_plane)
    free = np.ones(existing_plane.shape, dtype=bool) if paint_over else existing_plane == 0
    rows, cols, values = [], [], []
    for k, mask in enumerate(object_masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != existing_plane.shape:
            raise ValueError(f"Mask of shape {mask.shape} does not fit the label plane {existing_plane.shape}.")
        write = mask & free
        r, c = np.nonzero(write)
        rows.append(r)
        cols.append(c)
        values.append(np.full(r.shape, first_id + k, dtype=np.int64))
        free &= ~write  # a pixel belongs to one object of this commit
    if not rows:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)
