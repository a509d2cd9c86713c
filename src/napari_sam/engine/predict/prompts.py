"""Prompts of one 2D plane from nD annotation data (numpy in, numpy out; no napari).

Frames: everything here is in the *data* frame of the image being segmented,
pixel centres at integers. An nD array is looked at one 2D plane at a time: the
plane is spanned by two ``displayed_axes`` (rows = the smaller axis number, cols =
the larger) and fixed at integer indices along every other axis. Prompts come as
the nD coordinates napari layers store; what reaches the predictor is (row, col)
points and (min_row, min_col, max_row, max_col) boxes in that plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plane_axes(displayed_axes: Sequence[int]) -> tuple[int, int]:
    """The (row_axis, col_axis) of a plane shown on ``displayed_axes`` (two distinct axes).

    Parameters
    ----------
    displayed_axes
        The two data axes spanning the plane, in any order.

    Returns
    -------
    row_axis, col_axis : int
        The smaller axis number (rows) and the larger (cols).

    Raises
    ------
    ValueError
        ``displayed_axes`` is not two distinct axes.
    """
    axes = tuple(sorted(int(a) for a in displayed_axes))
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ValueError(f"A plane needs two distinct displayed axes, got {tuple(displayed_axes)}.")
    return axes  # type: ignore[return-value]


def on_plane(coords: np.ndarray, displayed_axes: Sequence[int], plane_index: dict[int, int]) -> np.ndarray:
    """Which of the (M, D) ``coords`` lie on the plane; returns an (M,) bool array.

    ``plane_index`` maps every non-displayed axis to the plane's integer index; a
    coordinate belongs to the plane when it rounds to that index (napari shows a
    point on the slice its coordinate rounds to).

    Parameters
    ----------
    coords
        (M, D) data coordinates.
    displayed_axes
        The two axes spanning the plane; entries of ``plane_index`` for them are ignored.
    plane_index
        Axis -> integer index of the plane along it. Axes it leaves out are not checked.

    Returns
    -------
    np.ndarray
        (M,) bool, True for the coordinates on the plane.
    """
    coords = np.asarray(coords, dtype=float)
    keep = np.ones(len(coords), dtype=bool)
    if coords.size == 0:
        return keep
    for axis, index in plane_index.items():
        if axis in displayed_axes:
            continue
        keep &= np.floor(coords[:, axis] + 0.5) == index
    return keep


def points_on_plane(
    coords: np.ndarray,
    labels: np.ndarray,
    displayed_axes: Sequence[int],
    plane_index: dict[int, int],
    plane_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts of one plane.

    Points that do not lie on the plane and inside its ``plane_shape`` are not
    prompts of this plane and are left out.

    Parameters
    ----------
    coords
        (M, D) data coordinates (napari Points data).
    labels
        (M,) 1 positive / 0 negative, one per point.
    displayed_axes
        The two axes spanning the plane (see :func:`plane_axes`).
    plane_index
        Axis -> integer index of the plane along every non-displayed axis.
    plane_shape
        (H, W) of the plane; a point is inside when it rounds to a pixel of it.

    Returns
    -------
    points : np.ndarray
        (N, 2) float (row, col) in the plane.
    labels : np.ndarray
        (N,) int labels of those points.
    """
    coords = np.asarray(coords, dtype=float).reshape(len(coords), -1) if len(coords) else np.zeros((0, 2))
    labels = np.asarray(labels).reshape(-1)
    if len(coords) == 0:
        return np.zeros((0, 2)), np.zeros((0,), dtype=int)
    row_axis, col_axis = plane_axes(displayed_axes)
    keep = on_plane(coords, (row_axis, col_axis), plane_index)
    rc = coords[:, [row_axis, col_axis]]
    h, w = plane_shape
    keep &= (rc[:, 0] >= -0.5) & (rc[:, 0] < h - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] < w - 0.5)
    return rc[keep], labels[keep].astype(int)


def boxes_on_plane(
    shapes: Sequence[np.ndarray],
    displayed_axes: Sequence[int],
    plane_index: dict[int, int],
    plane_shape: tuple[int, int],
) -> np.ndarray:
    """Box prompts of one plane from shape vertices.

    A shape is on the plane when all its vertices are; shapes entirely outside the
    plane's (H, W) are left out.

    Parameters
    ----------
    shapes
        A sequence of (V, D) vertex arrays (napari Shapes data; a rectangle has 4 vertices).
    displayed_axes
        The two axes spanning the plane (see :func:`plane_axes`).
    plane_index
        Axis -> integer index of the plane along every non-displayed axis.
    plane_shape
        (H, W) of the plane.

    Returns
    -------
    np.ndarray
        (K, 4) float boxes (min_row, min_col, max_row, max_col): each shape's
        bounding box clipped to the plane's pixels.
    """
    row_axis, col_axis = plane_axes(displayed_axes)
    h, w = plane_shape
    boxes = []
    for vertices in shapes:
        vertices = np.asarray(vertices, dtype=float)
        if vertices.size == 0 or not on_plane(vertices, (row_axis, col_axis), plane_index).all():
            continue
        rc = vertices[:, [row_axis, col_axis]]
        lo, hi = rc.min(axis=0), rc.max(axis=0)
        if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > h - 0.5 or lo[1] > w - 0.5:
            continue
        lo = np.clip(lo, 0, [h - 1, w - 1])
        hi = np.clip(hi, 0, [h - 1, w - 1])
        boxes.append([lo[0], lo[1], hi[0], hi[1]])
    return np.asarray(boxes, dtype=float).reshape(-1, 4)


def candidate_order(scores: np.ndarray) -> np.ndarray:
    """Indices of the (K,) candidate ``scores`` from best to worst (stable for ties).

    Parameters
    ----------
    scores
        (K,) scores of the candidate masks, higher is better.

    Returns
    -------
    np.ndarray
        (K,) int indices into ``scores``.
    """
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable")


