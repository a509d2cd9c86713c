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


def object_areas(labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The objects of a label image and their sizes in pixels, over all planes.

    Reads a stack one plane (first axis) at a time, so a volume is never copied whole.

    Parameters
    ----------
    labels
        Label image of any shape (numpy or any array indexable along its first axis),
        0 the background, no negative ids.

    Returns
    -------
    ids, areas : np.ndarray
        Each (K,) int64: the ids present, ascending, and their pixel counts.
    """
    labels_shape = np.shape(labels)
    chunks = (labels,) if len(labels_shape) < 3 else (labels[i] for i in range(labels_shape[0]))
    found_ids, found_counts = [], []
    for chunk in chunks:
        chunk = np.asarray(chunk).ravel()
        top = int(chunk.max(initial=0))
        if top <= 4 * chunk.size + 256:  # dense ids: one linear pass
            counts = np.bincount(chunk.astype(np.intp, copy=False), minlength=top + 1)
            ids = np.flatnonzero(counts)
            counts = counts[ids]
        else:  # a few very large ids: bincount would allocate up to max id
            ids, counts = np.unique(chunk, return_counts=True)
        keep = ids != 0
        found_ids.append(ids[keep].astype(np.int64))
        found_counts.append(counts[keep].astype(np.int64))
    if not found_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, inverse = np.unique(np.concatenate(found_ids), return_inverse=True)
    areas = np.bincount(inverse, weights=np.concatenate(found_counts), minlength=len(ids)).astype(np.int64)
    return ids, areas


def object_pixels(labels: npt.ArrayLike, label_id: int) -> tuple[np.ndarray, ...]:
    """Every pixel of object ``label_id``, as an nD index (for ``Labels.data_setitem`` or deletion).

    Parameters
    ----------
    labels
        Label image of any shape.
    label_id
        The object's id (not 0).

    Returns
    -------
    tuple of np.ndarray
        ``labels.ndim`` arrays of the same length P (0 when the id is absent).
    """
    return np.nonzero(np.asarray(labels) == label_id)


def object_plane(labels: npt.ArrayLike, label_id: int, plane_axes: tuple[int, int]) -> dict[int, int] | None:
    """The plane (index on every axis but ``plane_axes``) where object ``label_id`` has most pixels.

    Parameters
    ----------
    labels
        Label image of any shape, ndim >= 2.
    label_id
        The object's id.
    plane_axes
        The two axes spanning a plane (the displayed ones).

    Returns
    -------
    dict or None
        {axis: index} for the other axes ({} for a 2D image); None when the id is absent.
    """
    pixels = object_pixels(labels, label_id)
    if len(pixels[0]) == 0:
        return None
    others = [axis for axis in range(len(pixels)) if axis not in plane_axes]
    if not others:
        return {}
    positions, counts = np.unique(np.stack([pixels[a] for a in others], axis=1), axis=0, return_counts=True)
    best = positions[int(np.argmax(counts))]
    return {axis: int(index) for axis, index in zip(others, best, strict=True)}


def resegment_pixels(
    existing_plane: np.ndarray, mask: np.ndarray, label_id: int, paint_over: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and values that replace object ``label_id`` in a label plane by ``mask``.

    The object's old pixels outside ``mask`` become background; ``mask`` is written
    as ``label_id`` over background and the object's own pixels (over other objects
    too with ``paint_over``).

    Parameters
    ----------
    existing_plane
        (H, W) labels currently in the plane; read only.
    mask
        (H, W) bool: the object's new extent in this plane.
    label_id
        The id kept by the object.
    paint_over
        Also write over pixels of other objects.

    Returns
    -------
    rows, cols, values : np.ndarray
        Each (P,): ``plane[rows, cols] = values`` does the replacement.

    Raises
    ------
    ValueError
        ``mask``'s shape differs from ``existing_plane``'s.
    """
    existing_plane = np.asarray(existing_plane)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != existing_plane.shape:
        raise ValueError(f"Mask of shape {mask.shape} does not fit the label plane {existing_plane.shape}.")
    old = existing_plane == label_id
    free = old | (np.ones_like(old) if paint_over else existing_plane == 0)
    target = np.where(mask & free, label_id, np.where(old, 0, existing_plane))
    rows, cols = np.nonzero(target != existing_plane)
    return rows, cols, target[rows, cols].astype(np.int64)
