"""``segment_volume``: automatic 3D instance segmentation of a z-stack, or tracking in a time series.

Every plane along ``axis`` is segmented automatically on its own - a plane that fits one SAM
input from the stack's cached embedding (:class:`StackEmbeddings`, shared with propagation),
a larger one through the tiled engine (``segment_everything``), with ONE intensity range for
the whole volume - and the planes' objects are linked into 3D objects by overlap
(:mod:`napari_sam.engine.volume.linking` documents the merge and split rule and the minimum
extent, in physical units from ``spacing``). On a (T, Y, X) series the same linking gives
tracks: an object keeps its id from frame to frame.

Output: in memory, or ``out=`` a zarr path written plane by plane (never the whole volume in
memory), safely: an existing output is replaced only with ``overwrite`` and once complete;
an interrupted run leaves the zarr marked ``complete: false`` with ``planes_done``, and
``resume=True`` continues it after the last finished plane.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_sam.engine.automatic.params import AutomaticParams
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.outputs import open_output, plan_output
from napari_sam.engine.volume.linking import PlaneLinker, extent_filter
from napari_sam.engine.volume.stack_embeddings import (
    StackEmbeddings,
    range_of,
    stack_embeddings,
)
from napari_sam.engine.volume.volumes import VolumeView, volume_view

RUN_FORMAT = "napari-sam-volume"
DEFAULT_PARAMS = AutomaticParams(points_per_side=16, pred_iou_thresh=0.5, nested_thresh=0.8)
"""Per-plane mask generation for volumes: a 16 x 16 grid (planes are many; objects span several,
so a miss on one plane is bridged by linking) and nested masks dropped (a part inside its
object would start a 3D object of its own)."""


@dataclasses.dataclass(frozen=True)
class LinkOptions:
    """How planes are linked (the rule is in :mod:`~napari_sam.engine.volume.linking`).

    ``min_iou``: least IoU to continue an object; ``max_gap``: planes an object may be missing;
    ``min_extent``: least extent along the axis in physical units (None: two planes' worth).
    """

    min_iou: float = 0.3
    max_gap: int = 1
    min_extent: float | None = None

    def validate(self) -> None:
        """Check the ranges.

        Raises
        ------
        InputError
            A setting is out of range.
        """
        if not 0.0 < float(self.min_iou) <= 1.0:
            raise InputError(f"min_iou must lie in (0, 1], got {self.min_iou}.")
        if int(self.max_gap) < 0:
            raise InputError(f"max_gap must be >= 0, got {self.max_gap}.")
        if self.min_extent is not None and not float(self.min_extent) >= 0:
            raise InputError(f"min_extent must be >= 0 (physical units), got {self.min_extent}.")


def segment_volume_steps(
    model_or_predictor: Any,
    volume: Any,
    axis: int = 0,
    out: Any = None,
    *,
    spacing: Any = None,
    params: AutomaticParams | None = None,
    min_iou: float = LinkOptions.min_iou,
    max_gap: int = LinkOptions.max_gap,
    min_extent: float | None = LinkOptions.min_extent,
    intensity_range: tuple | None = None,
    tile_shape: int | tuple[int, int] | None = None,
    halo: int | tuple[int, int] | None = None,
    cache: Any = None,
    device: str | None = None,
    precision: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
) -> Generator[tuple[int, int], None, Any]:
    """Generator form of :func:`segment_volume`: yields ``(planes done, planes in all)`` after each
    plane and returns the labels (``StopIteration.value``); closing it stops between planes.

    Parameters
    ----------
    model_or_predictor, volume, axis, out, spacing, params, min_iou, max_gap, min_extent
        As in :func:`segment_volume`.
    intensity_range, tile_shape, halo, cache, device, precision, overwrite, resume
        As in :func:`segment_volume`.

    Returns
    -------
    The int32 labels: numpy, or the zarr at ``out`` opened.

    Raises
    ------
    InputError
        As :func:`segment_volume`.
    """
    params = params or DEFAULT_PARAMS
    params.validate()
    links = LinkOptions(min_iou, max_gap, min_extent)
    links.validate()
    view = volume_view(volume, axis, range_of(cache, intensity_range))
    spacing = _checked_spacing(spacing)
    plan = plan_output(out, view.shape, image=volume, overwrite=overwrite, resume=resume)
    predictor = _predictor(model_or_predictor, device, precision)
    record = _run_record(view, predictor, params, links, spacing, tile_shape, halo) if plan.kind == "zarr" else None
    start, next_id = _resume_point(plan, record)
    if start is None:  # complete already
        return open_output(plan, resume_existing=True).commit()
    embeddings = stack_embeddings(predictor, view, cache)
    total = view.n_planes
    output = open_output(plan, {"run": record, "tiles_total": total, "planes_total": total,
                                **({} if start else {"tiles_done": 0, "planes_done": 0, "next_id": 1})},
                         resume_existing=start > 0)
    try:
        linker = PlaneLinker(links.min_iou, links.max_gap, next_id)
        _restore_linker(linker, output.array, view, start)
        for plane in range(start, total):
            labels = _plane_labels(predictor, embeddings, view, plane, params, tile_shape, halo, precision)
            output.array[view.index(plane)] = linker.link(plane, labels)
            output.record(tiles_done=plane + 1, planes_done=plane + 1, next_id=linker.next_id)
            yield plane + 1, total
        min_extent = links.min_extent if links.min_extent is not None else 2 * spacing[view.axis]
        _remove_short_objects(output.array, view, spacing[view.axis], min_extent)
        return output.commit()
    except BaseException:
        output.discard()
        raise


def segment_volume(
    model_or_predictor: Any,
    volume: Any,
    axis: int = 0,
    out: Any = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Any:
    """Automatic 3D instance segmentation (or tracking, along T) of a volume; int32 labels, 0 = background.

    Parameters
    ----------
    model_or_predictor
        A :class:`~napari_sam.engine.Predictor`, a SAM module, a zoo name or a checkpoint path.
    volume
        (Z, Y, X) or (Z, Y, X, C<=4) array-like (numpy, dask, zarr, memory-mapped TIFF; any
        dtype) or a path; read one plane at a time.
    axis
        The spatial axis planes are taken along (0: Z of a stack, T of a series).
    out
        None (a numpy array), a ``.zarr`` path (written plane by plane; returned opened) or
        an existing zero-filled array of the volume's spatial shape.
    progress
        Called with (planes done, planes in all) after each plane.
    **options
        ``spacing`` (physical voxel size along the 3 spatial axes, default 1), ``params``
        (per-plane :class:`AutomaticParams`, default ``DEFAULT_PARAMS``), ``min_iou``,
        ``max_gap``, ``min_extent`` (linking, see :class:`LinkOptions`), ``intensity_range``
        (one for all planes; default sampled from the volume), ``tile_shape`` and ``halo``
        (planes larger than one SAM input are tiled), ``cache`` (embeddings, as in
        :func:`~napari_sam.engine.propagate_object`), ``device``, ``precision``,
        ``overwrite`` and ``resume`` (as in :func:`~napari_sam.engine.segment_everything`).

    Returns
    -------
    The labels in the volume's spatial shape: a numpy array, ``out`` itself, or the zarr at
    ``out`` opened.

    Raises
    ------
    InputError
        Not a volume, a bad axis or setting, NaN in a plane, or an output that exists (without
        ``overwrite`` / ``resume``), overlaps the input, or holds another run.
    """
    from napari_sam.engine.automatic.segment import run_steps

    # run_steps drives the generator, reports progress and closes it on any interruption
    return run_steps(segment_volume_steps(model_or_predictor, volume, axis, out, **options), progress)


# ----------------------------------------------------------------------------- pieces


def _predictor(model_or_predictor: Any, device: str | None, precision: str):
    if hasattr(model_or_predictor, "compute_embedding"):
        return model_or_predictor
    from napari_sam.engine.automatic.segment import load_model_any
    from napari_sam.engine.predict.predictor import Predictor

    return Predictor(load_model_any(model_or_predictor, device), device=device, precision=precision)


def _checked_spacing(spacing) -> tuple[float, float, float]:
    from napari_sam.engine.volume.propagate import _checked_spacing as checked

    return checked(spacing)


def _run_record(view: VolumeView, predictor, params: AutomaticParams, links: LinkOptions, spacing, tile_shape,
                halo) -> dict:
    """What the labels depend on, JSON-compatible, stored with a zarr output to resume it."""
    from napari_sam.engine.predict.fingerprint import image_fingerprint

    return {
        "format": RUN_FORMAT,
        "shape": list(view.shape),
        "dtype": str(np.dtype(view.data.dtype)),
        "pixels": image_fingerprint(view.data),
        "axis": view.axis,
        "intensity_range": None if view.intensity_range is None else [np.asarray(v).tolist()
                                                                       for v in view.intensity_range],
        "params": dataclasses.asdict(params),
        "links": dataclasses.asdict(links),
        "spacing": list(spacing),
        "tile_shape": None if tile_shape is None else np.broadcast_to(tile_shape, (2,)).tolist(),
        "halo": None if halo is None else np.broadcast_to(halo, (2,)).tolist(),
        "model": predictor.encoder_fingerprint(),
    }


def _resume_point(plan, record: dict | None) -> tuple[int | None, int]:
    """(first plane to segment, next free id); (None, _) for a complete run to return as is."""
    if not (plan.exists and plan.resume):
        return 0, 1
    info = plan.info or {}
    stored = info.get("run")
    if not isinstance(stored, dict) or stored.get("format") != RUN_FORMAT:
        if plan.overwrite:
            return 0, 1
        raise InputError(f"{plan.path} does not hold a napari-sam volume segmentation, so it cannot be resumed; "
                         "pass overwrite=True to replace it, or choose another output path.")
    if stored != record:
        if plan.overwrite:
            return 0, 1
        differences = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
        raise InputError(f"{plan.path} holds a volume segmentation with other settings or data "
                         f"(different: {', '.join(differences)}); resume it with the same ones, or pass "
                         "overwrite=True to start over.")
    if info.get("complete"):
        return None, 0
    return int(info.get("planes_done", 0)), int(info.get("next_id", 1))


def _restore_linker(linker: PlaneLinker, labels, view: VolumeView, start: int) -> None:
    """Let a resumed run continue the objects of the planes written before it stopped."""
    for plane in range(max(0, start - linker.max_gap - 1), start):
        flat = np.asarray(labels[view.index(plane)]).ravel()
        for gid in np.unique(flat[flat > 0]):
            linker.remember(int(gid), np.flatnonzero(flat == gid), plane)


def _plane_labels(predictor, embeddings: StackEmbeddings, view: VolumeView, plane: int, params: AutomaticParams,
                  tile_shape, halo, precision: str) -> np.ndarray:
    """One plane's automatic labels: from its cached embedding when it fits one SAM input, else tiled."""
    size = predictor.config.img_size
    if tile_shape is None and max(view.plane_shape) <= size:
        from napari_sam.engine.automatic.generation import generate_labels

        return generate_labels(predictor, params=params, embedding=embeddings.get(plane))
    from napari_sam.engine.automatic.segment import run_steps, segment_everything_steps

    # prompts (AMG) as for planes that fit one input: a model with an instance decoder would otherwise switch
    # to instance mode on large planes only
    steps = segment_everything_steps(_ScaledPlane(view, plane), predictor.model, tile_shape, halo, params,
                                     device=str(predictor.device), precision=precision, method="amg")
    return np.asarray(run_steps(steps))


class _ScaledPlane:
    """One plane as uint8 RGB scaled with the volume's intensity range, read window by window.

    ``segment_everything`` would take a range from the plane alone; handing it the plane already
    scaled (uint8 is used as is) keeps one range for the whole volume without reading the plane whole.
    """

    def __init__(self, view: VolumeView, plane: int):
        self.view, self.plane = view, plane
        self.shape = (*view.plane_shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        """``plane[rows, cols]``: the window's pixels scaled to (rows, cols, 3) uint8."""
        from napari_sam.engine.predict.preprocessing import to_uint8_rgb

        rows, cols = key
        index = [slice(None)] * 3
        index[self.view.axis] = self.plane
        index[self.view.plane_axes[0]], index[self.view.plane_axes[1]] = rows, cols
        pixels = np.asarray(self.view.data[tuple(index)])
        return to_uint8_rgb(pixels, self.view.intensity_range)  # refuses NaN


def _remove_short_objects(labels, view: VolumeView, step: float, min_extent: float) -> set[int]:
    """Remove the objects whose extent along the axis is below ``min_extent`` (two passes, plane by plane)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for plane in range(view.n_planes):
        for gid in np.unique(np.asarray(labels[view.index(plane)])):
            if gid:
                first.setdefault(int(gid), plane)
                last[int(gid)] = plane
    short = extent_filter(first, last, step, min_extent)
    if short:
        remove = np.fromiter(short, dtype=np.int64)
        for plane in range(view.n_planes):
            pixels = np.asarray(labels[view.index(plane)])
            drop = np.isin(pixels, remove)
            if drop.any():
                labels[view.index(plane)] = np.where(drop, 0, pixels)
    return short
