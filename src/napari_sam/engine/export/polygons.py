"""Masks to polygons and back, through scikit-image (``find_contours``, ``approximate_polygon``,
``draw.polygon``).

Frame: vertices are ``(x, y)`` = (column, row) in the continuous frame where pixel
(row, col) covers ``[col, col + 1) x [row, row + 1)``, COCO's (pycocotools rasterises
polygons that way). A contour is traced at level 0.5 between pixel centres, so every pixel
of the mask has its centre inside its polygon and every background pixel outside, before
simplification.

What polygons lose (documented in docs/datasets.md):

* Holes: a polygon is an outline; the hole of a ring is filled when it is drawn again.
* Multi-part objects: :func:`mask_to_polygons` gives one polygon per 4-connected part (COCO
  keeps them all in one annotation); :func:`merge_parts` joins the parts into ONE polygon
  with zero-width bridges (YOLO-seg has one polygon per line), which adds at most a thin
  line of pixels along each bridge when drawn again.
* Pixels touching only diagonally form separate parts. A single pixel becomes a small
  diamond around its centre, so even it survives a round trip.
* Simplification moves the outline by at most ``tolerance`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DEFAULT_TOLERANCE = 0.25
"""Most distance, in pixels, a simplified outline may stray from the traced one: below 0.5, so no
pixel centre changes side (the traced outline runs 0.5 from them) and a round trip is exact for
most shapes; a third of the traced vertices are kept."""


def mask_to_polygons(mask: npt.ArrayLike, tolerance: float = DEFAULT_TOLERANCE) -> list[np.ndarray]:
    """The outlines of a mask's parts as polygons, largest part first.

    Parameters
    ----------
    mask
        (H, W) bool mask of one object.
    tolerance
        Douglas-Peucker tolerance in pixels (``approximate_polygon``); 0 keeps every traced vertex.

    Returns
    -------
    list of np.ndarray
        One ``(N, 2)`` float64 array of ``(x, y)`` vertices per part (N >= 3, not closed:
        the last vertex is not the first repeated); holes are not outlined.
    """
    from scipy import ndimage
    from skimage import measure

    filled = ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))
    if not filled.any():
        return []
    padded = np.pad(filled, 1).astype(np.float32)  # closes contours that touch the border
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        if tolerance > 0:
            contour = measure.approximate_polygon(contour, tolerance)
        ring = contour[:-1] if len(contour) > 1 and np.array_equal(contour[0], contour[-1]) else contour
        if len(ring) < 3:
            continue
        # padded index frame (centre of pixel (r, c) at (r + 1, c + 1)) -> continuous (x, y)
        polygons.append(ring[:, ::-1] - 0.5)
    polygons.sort(key=polygon_area, reverse=True)
    return polygons


def polygon_area(polygon: np.ndarray) -> float:
    """The area enclosed by a polygon (shoelace formula), in square pixels.

    Parameters
    ----------
    polygon
        (N, 2) vertices.

    Returns
    -------
    float
        Its absolute area.
    """
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def merge_parts(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """One polygon visiting every part: each part is spliced in at the nearest vertex pair by a
    zero-width bridge (out along it, once around the part, back the same way).

    Parameters
    ----------
    polygons
        (N_i, 2) polygons, e.g. from :func:`mask_to_polygons` (largest first).

    Returns
    -------
    np.ndarray
        (M, 2) vertices; the first polygon itself when there is one; empty (0, 2) for none.
    """
    if not polygons:
        return np.zeros((0, 2))
    merged = np.asarray(polygons[0], dtype=np.float64)
    for part in polygons[1:]:
        part = np.asarray(part, dtype=np.float64)
        distances = ((merged[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        detour = np.concatenate([np.roll(part, -j, axis=0), part[j : j + 1]])
        merged = np.concatenate([merged[: i + 1], detour, merged[i:]])
    return merged


def polygons_to_mask(polygons: Sequence[npt.ArrayLike], shape: tuple[int, int]) -> np.ndarray:
    """Draw polygons (their union) into an (H, W) mask: a pixel is in when its centre is inside.

    Parameters
    ----------
    polygons
        (N, 2) ``(x, y)`` vertex arrays in the continuous frame (see the module's docstring).
    shape
        (H, W) of the mask.

    Returns
    -------
    np.ndarray
        (H, W) bool.
    """
    from skimage import draw

    mask = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        polygon = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(polygon) < 3:
            continue
        # centre of pixel (r, c) is at (c + 0.5, r + 0.5): shift into the index frame
        rows, cols = draw.polygon(polygon[:, 1] - 0.5, polygon[:, 0] - 0.5, shape)
        mask[rows, cols] = True
    return mask
