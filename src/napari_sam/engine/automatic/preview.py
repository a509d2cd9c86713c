"""A quick preview of automatic segmentation on a small region, as a full run would segment it there.

Both methods: automatic masks (SAM prompts) and the instance decoder (``method``, as for
:func:`~napari_sam.engine.automatic.segment.segment_everything`).

Tuning thresholds on a whole slide takes a run per try; :func:`preview_labels` segments
one region of at most one tile in seconds. The model sees the region at the scale a full
run gives it: the window it encodes is one tile (``tile_shape``, default the model's
input size) around the region, and the prompts are the full run's lattice points that
fall inside the region (``lattice_points`` fixed to the image), so the objects found
match those of :func:`~napari_sam.engine.automatic.segment.segment_everything` there,
away from the seams of its tiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.engine.automatic.diagnostics import FilterReport
from napari_sam.engine.automatic.instance import InstanceParams
from napari_sam.engine.automatic.params import (
    AutomaticParams,
    check_method,
    resolve_method,
)
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import Box, read_window


def preview_window(shape: tuple[int, int], box: Box, tile: tuple[int, int]) -> tuple[Box, Box]:
    """The region a preview segments and the window it encodes, both in image pixels.

    Parameters
    ----------
    shape
        (H, W) of the image.
    box
        (row0, row1, col0, col1) of the region asked for, half-open, inside the image.
    tile
        (rows, cols) of a full run's windows.

    Returns
    -------
    region, window : Box
        ``box`` cut to at most one tile around its centre, and the tile-sized window
        centred on it, moved inside the image (smaller only where the image is).
    """
    region, window = [], []
    for start, stop, size, side in ((box[0], box[1], shape[0], tile[0]), (box[2], box[3], shape[1], tile[1])):
        centre = (start + stop) // 2
        extent = min(stop - start, side)
        first = int(np.clip(centre - extent // 2, start, stop - extent))
        region.append((first, first + extent))
        corner = int(np.clip(centre - side // 2, 0, max(0, size - side)))
        window.append((corner, min(size, corner + side)))
    return (*region[0], *region[1]), (*window[0], *window[1])


def preview_labels(
    image: Any,
    model: Any,
    box: Box,
    tile_shape: int | tuple[int, int] | None = None,
    params: AutomaticParams | None = None,
    device: str | None = None,
    report: FilterReport | None = None,
    *,
    method: str | None = None,
    instance_params: InstanceParams | None = None,
) -> tuple[Box, np.ndarray]:
    """Segment the objects of one region of a 2D image as a full tiled run would: (region, labels).

    Parameters
    ----------
    image
        (H, W) or (H, W, C) array-like; only one window and a subsample (for the
        intensity range) are read.
    model
        A SAM ``nn.Module``, a zoo name or a checkpoint path.
    box
        (row0, row1, col0, col1) of the region, half-open; cut to at most one tile.
    tile_shape
        The full run's tile side(s); default the model's input size.
    params
        Settings of mask generation (default ``AutomaticParams()``).
    device
        Where the model runs (None: the best available).
    report
        If given, the preview's counts per filter are added to it (method "amg").
    method
        ``"instance"``, ``"amg"`` or None (the model's instance decoder when it has one), as for
        ``segment_everything``.
    instance_params
        Settings of instance mode (default ``InstanceParams()``).

    Returns
    -------
    region : Box
        The region segmented (``box`` cut to one tile around its centre).
    labels : np.ndarray
        (h, w) int32 labels of the region, 1..N, 0 the background.

    Raises
    ------
    InputError
        A stack or otherwise unusable image, a box outside it, bad settings, an unknown method or
        ``"instance"`` with a model that has no instance decoder.
    """
    from napari_sam.engine.automatic.generation import generate_labels, lattice_points
    from napari_sam.engine.automatic.instance import segment_instances
    from napari_sam.engine.automatic.segment import (
        load_model_any,
        open_segmentable_image,
    )
    from napari_sam.engine.automatic.tiling import global_intensity_range
    from napari_sam.engine.predict.predictor import Predictor

    params = params or AutomaticParams()
    params.validate()
    check_method(method)
    if instance_params is not None:
        instance_params.validate()
    image, layout = open_segmentable_image(image)
    if layout.stack_axes:
        raise InputError("A preview segments one 2D plane; pass one plane of the stack.")
    height, width = layout.plane
    if not (0 <= box[0] < box[1] <= height and 0 <= box[2] < box[3] <= width):
        raise InputError(f"The preview region {box} does not lie inside the image of {height} x {width} pixels.")
    model = load_model_any(model, device)
    method = resolve_method(method, model)
    side = model.config.img_size if tile_shape is None else tile_shape
    tile = tuple(int(s) for s in np.broadcast_to(side, (2,)))
    region, window = preview_window((height, width), box, tile)
    pixels = read_window(image, window)
    predictor = Predictor(model, device=device)
    value_range = global_intensity_range(image, layout.has_channels)
    if method == "instance":
        labels = segment_instances(predictor, pixels, instance_params or InstanceParams(), value_range)
    else:
        spacing = (tile[0] / params.points_per_side, tile[1] / params.points_per_side)
        points, coarseness = lattice_points(spacing, (window[0], window[2]), pixels.shape[:2])
        inside = (
            (points[:, 0] >= region[0] - window[0]) & (points[:, 0] < region[1] - window[0])
            & (points[:, 1] >= region[2] - window[2]) & (points[:, 1] < region[3] - window[2])
        )
        labels = generate_labels(
            predictor, pixels, params, value_range, points=points[inside], coarseness=coarseness[inside], report=report,
        )
    crop = labels[region[0] - window[0] : region[1] - window[0], region[2] - window[2] : region[3] - window[2]]
    _, consecutive = np.unique(crop, return_inverse=True)  # 0 stays 0: the crop is rarely all objects
    consecutive = consecutive.reshape(crop.shape).astype(np.int32)
    return region, consecutive if (crop == 0).any() else consecutive + 1
