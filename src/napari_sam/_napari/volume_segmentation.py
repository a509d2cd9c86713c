"""Segment volume: automatic 3D objects (or tracks over time) from the Segment everything widget.

"Link planes into 3D objects" next to "All planes" makes a run segment every plane
of a stack or movie with the tiled automatic engine and link the planes' masks into
3D objects by overlap (:func:`napari_sam.engine.segment_volume_steps`): one id per
object through the slices, or per cell through the frames. The widget runs it as it
runs a segmentation of all planes (worker, progress, Cancel) into a new Labels layer;
this module holds the checkbox, the worker job and the summary of the result.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets

if TYPE_CHECKING:
    from napari_sam._napari.model_picker import LoadedModel
    from napari_sam.engine.automatic.params import AutomaticParams

LINK_TEXT = "Link planes into 3D objects"
LINK_TIP = (
    "Segment volume: segment every slice (or frame), then join the masks that overlap from one slice "
    "to the next into 3D objects, each with one id through the stack (for a time series: one id per "
    "cell over time). Turns on All planes."
)
LAYER_SUFFIX = "volume"


def link_planes_checkbox(all_planes: widgets.CheckBox) -> widgets.CheckBox:
    """The "Link planes into 3D objects" checkbox, kept consistent with ``all_planes``.

    Checking it checks ``all_planes`` (linking needs every plane); unchecking
    ``all_planes`` unchecks it.

    Parameters
    ----------
    all_planes
        The widget's "All planes" checkbox (it enables this one for stacks).
    """
    box = widgets.CheckBox(text=LINK_TEXT, value=False, enabled=False, tooltip=LINK_TIP)

    def on_link(checked: bool) -> None:
        if checked:
            all_planes.value = True

    def on_all_planes(checked: bool) -> None:
        if not checked:
            box.value = False

    box.changed.connect(on_link)
    all_planes.changed.connect(on_all_planes)
    return box


def volume_job(
    pixels: Any,
    loaded: LoadedModel,
    tile_shape: int | None,
    halo: int | None,
    params: AutomaticParams,
    spacing: tuple[float, float, float] | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Worker generator: segments the stack ``pixels`` (Z, H, W[, C]) into linked 3D objects.

    Yields (slices done, slices in all); returns the int32 labels (Z, H, W).

    Parameters
    ----------
    pixels
        The stack, plane axis first, any array type (read plane by plane, tile by tile).
    loaded
        The model and the device it was loaded for.
    tile_shape, halo
        Tile side and halo in pixels; None: the engine's defaults.
    params
        The automatic-segmentation settings of each plane.
    spacing
        (z, row, col) physical sizes (the layer's scale), for rules in physical units.
    """
    from napari_sam.engine import segment_volume_steps

    labels = yield from segment_volume_steps(
        loaded.model,
        pixels,
        axis=0,
        params=params,
        tile_shape=tile_shape,
        halo=halo,
        device=loaded.key.torch_device,
        spacing=spacing,
    )
    return np.asarray(labels)


def stack_spacing(image, stack_axis: int, plane_axes: tuple[int, int]) -> tuple[float, float, float]:
    """(z, row, col) pixel sizes of ``image`` (its scale) for a stack along ``stack_axis``.

    Parameters
    ----------
    image
        The Image layer.
    stack_axis
        Its data axis the planes are stacked along.
    plane_axes
        Its (row, col) data axes.
    """
    scale = np.abs(np.asarray(image.scale, dtype=float))
    return float(scale[stack_axis]), float(scale[plane_axes[0]]), float(scale[plane_axes[1]])


def describe_volume(labels: np.ndarray) -> str:
    """'12 3D objects (3 to 9 slices each)': the result of a run, as the status says it.

    Parameters
    ----------
    labels
        (Z, H, W) int labels.
    """
    labels = np.asarray(labels)
    present = labels.reshape(len(labels), -1)
    ids = np.unique(present[present > 0])
    if not len(ids):
        return "no objects"
    extents = np.zeros(len(ids), dtype=int)
    for plane in present:
        extents += np.isin(ids, plane, assume_unique=False)
    low, high = int(extents.min()), int(extents.max())
    span = f"{low} slice{'s' if low != 1 else ''}" if low == high else f"{low} to {high} slices"
    return f"{len(ids)} 3D object{'s' if len(ids) != 1 else ''} ({span} each)"
