"""``segment_everything``: automatic instance segmentation of a 2D image or stack of any size.

The image is cut into tiles (``tiling``, whose docstring says how tile, halo and core
relate), every tile is segmented automatically -- from a grid of SAM prompts
(``generation``, method "amg") or by the model's instance decoder and a seeded watershed
(``instance``, method "instance", the default for a model that has a decoder) -- in this process
(``local_runner``) or on a Dask cluster (``dask_runner``), and the tiles' objects are
stitched so that each object appears exactly once (``stitching``, which documents the
seam rule and how a run resumes). Only a few windows and one row of tiles' objects are
in memory at a time; the output can be a zarr array or a memory-mapped TIFF on disk, so
images larger than memory work. Outputs are written safely (``napari_sam.engine.io.outputs``):
existing ones only replaced when asked and once complete, never the input, an interrupted
zarr run marked incomplete and resumable (``resume``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.automatic.diagnostics import FilterReport
from napari_sam.engine.automatic.params import (
    AutomaticParams,
    check_method,
    resolve_method,
)
from napari_sam.engine.automatic.resume import (
    ResumePoint,
    erase_unrecorded_labels,
    fresh_progress,
    progress_after,
    resume_point,
    run_record,
)
from napari_sam.engine.automatic.stitching import (
    SAME_OBJECT_OVERLAP,
    Stitcher,
    tiles_to_resume,
)
from napari_sam.engine.automatic.tiling import (
    TileGrid,
    global_intensity_range,
    make_tile_grid,
)
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import channels_first_hint, open_image, split_channels
from napari_sam.engine.io.outputs import (
    LabelOutput,
    OutputPlan,
    open_output,
    plan_output,
)
from napari_sam.engine.io.safe_write import is_disk_full

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.automatic.instance import InstanceParams

ProgressCallback = Callable[[int, int], None]
_DEFAULTS = AutomaticParams()  # the one source of the defaults below


@dataclass(frozen=True)
class ImageLayout:
    """How an image's axes are read: ``shape``, leading stack axes (0 or 1) and a trailing channel axis."""

    shape: tuple[int, ...]
    stack_axes: int
    has_channels: bool

    @property
    def plane(self) -> tuple[int, int]:
        """(H, W) of one slice."""
        return self.shape[self.stack_axes], self.shape[self.stack_axes + 1]

    @property
    def label_shape(self) -> tuple[int, ...]:
        """(H, W) or (Z, H, W): the image's shape without channels."""
        return self.shape[: self.stack_axes + 2]

    @property
    def planes(self) -> list[int | None]:
        """Slice indices of a stack; ``[None]`` for a 2D image."""
        return list(range(self.shape[0])) if self.stack_axes else [None]


def segment_everything_steps(
    image: Any,
    model: Any,
    tile_shape: int | tuple[int, int] | None = None,
    halo: int | tuple[int, int] | None = None,
    params: AutomaticParams | None = None,
    out: Any = None,
    scheduler: Any = None,
    device: str | None = None,
    precision: str = "auto",
    same_object_overlap: float = SAME_OBJECT_OVERLAP,
    tile_offset: int | tuple[int, int] = 0,
    encoder_batch: int | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    report: FilterReport | None = None,
    method: str | None = None,
    instance_params: InstanceParams | None = None,
) -> Generator[tuple[int, int], None, Any]:
    """Generator form of :func:`segment_everything`: yields ``(tiles done, tiles total)`` after each tile
    and returns the labels (``StopIteration.value``). Closing it stops the work between tiles.

    Parameters
    ----------
    image, model, tile_shape, halo, out, scheduler, device, precision, tile_offset, encoder_batch, overwrite, resume
        As in :func:`segment_everything`.
    params
        Settings of mask generation (method "amg"); default ``AutomaticParams()``.
    same_object_overlap
        The stitcher's duplicate threshold (``stitching.SAME_OBJECT_OVERLAP``).
    report, method
        As in :func:`segment_everything`.
    instance_params
        Settings of instance mode (method "instance"); default ``InstanceParams()``.

    Returns
    -------
    The int32 labels, (H, W) or (Z, H, W): a numpy array, ``out`` itself, or the zarr / TIFF
    at ``out`` opened for reading and writing.

    Raises
    ------
    InputError
        Anything wrong with the image, the settings, the output path or the disk; checked
        before anything is created, except a damaged part of the image or a full disk met
        during the run (the output is then left as :func:`segment_everything` describes).
    """
    params = _checked_params(params)
    check_method(method)
    if instance_params is not None:
        instance_params.validate()
    source = image
    image, layout = open_segmentable_image(image)
    plan = plan_output(out, layout.label_shape, image=source, overwrite=overwrite, resume=resume)
    model, loaded = _load_models(model, scheduler, device)
    params = _tile_params(resolve_method(method, loaded), params, instance_params)
    grid = _tile_grid(layout, loaded.config, tile_shape, halo, tile_offset)
    value_range = global_intensity_range(image, layout.has_channels)
    # what identifies the run, stored with a zarr output to resume it (other outputs cannot be resumed)
    record = None if plan.kind != "zarr" else run_record(
        image, layout.shape, grid, tile_offset, params, value_range, same_object_overlap, loaded
    )
    start = resume_point(plan, record) or ResumePoint()
    if start.complete:  # a finished run: nothing to do
        return open_output(plan, resume_existing=True).commit()
    runner = _tile_runner(model, scheduler, device, precision, encoder_batch)
    output = _open(plan, record, grid, layout, start)
    try:
        with runner:
            yield from _segment_planes(image, output, layout, grid, runner, params, value_range,
                                       same_object_overlap, start, report)
        return output.commit()
    except BaseException as error:  # interrupted (GeneratorExit, KeyboardInterrupt) or failed
        output.discard()
        if is_disk_full(error):
            raise InputError(_disk_full_message(output, error)) from error
        raise


def _checked_params(params: AutomaticParams | None) -> AutomaticParams:
    params = params or AutomaticParams()
    params.validate()
    return params


def _tile_params(method: str, params: AutomaticParams, instance_params):
    """The settings the tiles run with; their type tells the runners the method (``tiling.segment_tile``)."""
    if method == "amg":
        return params
    from napari_sam.engine.automatic.instance import InstanceParams

    return instance_params if instance_params is not None else InstanceParams()


def open_segmentable_image(image: Any) -> tuple[Any, ImageLayout]:
    """The opened image (``open_image``) and its layout; ``InputError`` when it cannot be segmented.

    Parameters
    ----------
    image
        An array-like (H, W), (H, W, C<=4), (Z, H, W) or (Z, H, W, C<=4), or a path to one.

    Returns
    -------
    tuple
        ``(array-like, ImageLayout)``. A (C<=4, H, W) array is read as a stack, with a
        ``UserWarning`` saying how to pass a channels-first image instead.

    Raises
    ------
    InputError
        No array, an empty one, an unsupported shape or dtype, or a file that cannot be opened.
    """
    image = open_image(image)
    shape = tuple(int(s) for s in getattr(image, "shape", ()))
    if not shape:
        raise InputError(f"Expected an image array or a path, got {type(image).__name__}.")
    stack_axes, has_channels = split_channels(shape)
    hint = channels_first_hint(shape)
    if hint is not None:  # a legitimate stack as often as a mis-read RGB image: say how it is read
        warnings.warn(hint, UserWarning, stacklevel=3)
    if any(s == 0 for s in shape):
        raise InputError(f"The image is empty (shape {shape}).")
    if np.dtype(image.dtype).kind not in "biuf":
        raise InputError(f"Unsupported image dtype {image.dtype}; expected numbers or booleans.")
    return image, ImageLayout(shape, stack_axes, has_channels)


def _load_models(model: Any, scheduler: Any, device: str | None) -> tuple[Any, Any]:
    """(what the tile runner gets, a loaded module for the config and the run's fingerprint).

    A zoo name or path for a cluster stays a name (the workers load it); it is loaded here on
    the CPU too, for its config.
    """
    if not isinstance(model, (str, os.PathLike)):
        return model, model
    if scheduler is None:
        loaded = load_model_any(model, device)
        return loaded, loaded
    return model, load_model_any(model, "cpu")


def _tile_grid(layout: ImageLayout, config, tile_shape, halo, tile_offset) -> TileGrid:
    """The tile grid of one slice; tile default: the model's input size, halo default: tile // 8."""
    stride = config.encoder.stride
    if min(layout.plane) < stride:
        raise InputError(
            f"The image plane {layout.plane} is narrower than {stride} pixels (one cell of the model's embedding): "
            "too thin to segment automatically."
        )
    tile_shape = tile_shape if tile_shape is not None else config.img_size
    if halo is None:
        halo = np.asarray(np.broadcast_to(tile_shape, (2,))) // 8
    return make_tile_grid(layout.plane, tile_shape, halo, min_tile=config.img_size, offset=tile_offset)


def _tile_runner(model: Any, scheduler: Any, device: str | None, precision: str, encoder_batch: int | None):
    """A runner here (``LocalTileRunner``) or on a Dask cluster (``DaskTileRunner``)."""
    if scheduler is None:
        from napari_sam.engine.automatic.local_runner import (
            LocalTileRunner,
            default_encoder_batch,
        )
        from napari_sam.engine.predict.predictor import Predictor

        predictor = Predictor(model, device=device, precision=precision)
        batch = encoder_batch if encoder_batch is not None else default_encoder_batch(predictor.device)
        return LocalTileRunner(predictor, batch)
    try:
        from napari_sam.engine.automatic.dask_runner import DaskTileRunner
    except ImportError as err:
        raise InputError(
            "Running on a Dask cluster (scheduler=...) needs the 'distributed' package: "
            "pip install 'napari-sam[dask]' (or pip install distributed)."
        ) from err
    return DaskTileRunner(scheduler, model, device, precision)


def _open(
    plan: OutputPlan, record: dict | None, grid: TileGrid, layout: ImageLayout, start: ResumePoint
) -> LabelOutput:
    """The output, with its progress attributes: the run's record, the tiles in all, none done yet
    (a resumed output keeps what it recorded)."""
    info = {"run": record, "tiles_total": len(grid) * len(layout.planes)}
    if not start.resumed:
        info.update(fresh_progress())
    return open_output(plan, info, resume_existing=start.resumed)


def _segment_planes(
    image, output: LabelOutput, layout: ImageLayout, grid: TileGrid, runner, params: AutomaticParams | InstanceParams,
    value_range, same_object_overlap: float, start: ResumePoint, report: FilterReport | None = None,
) -> Iterator[tuple[int, int]]:
    """Segment and stitch every slice from ``start`` on, recording progress after each painted tile."""
    planes = layout.planes
    total = len(grid) * len(planes)
    done = total - len(tiles_to_resume(grid, start.first_tile)) - len(grid) * (len(planes) - start.plane - 1)
    labels_used = start.labels_used
    for p in range(start.plane, len(planes)):
        first = start.first_tile if p == start.plane else 0
        plane_image = _plane(image, planes[p])
        plane_out = _plane(output.array, planes[p])
        if start.resumed and p == start.plane and first < len(grid):
            erase_unrecorded_labels(plane_out, grid.tiles[first].window, labels_used)

        def record(index: int, p: int = p) -> None:
            output.record(**progress_after(p, index, len(grid), stitcher.labels_used))

        stitcher = Stitcher(grid, plane_out, same_object_overlap, labels_used, on_painted=record, first_tile=first)
        tiles = tiles_to_resume(grid, first)
        tile_results = runner.iter_tile_labels(plane_image, grid, params, value_range, tiles=tiles, report=report)
        for index, tile_labels in tile_results:
            stitcher.add(index, np.asarray(tile_labels, dtype=np.int32))
            done += 1
            yield done, total
        if not stitcher.done:  # pragma: no cover - every tile arrives exactly once
            raise RuntimeError("Not every tile was stitched.")
        labels_used = stitcher.labels_used


def _plane(array, z: int | None):
    return array if z is None else _PlaneView(array, z)


def _disk_full_message(output: LabelOutput, error: OSError) -> str:
    where = output.path or "the output"
    if output.kind == "zarr" and output.path is not None and output.path.exists() and output.temporary is None:
        kept = (
            f"{output.info.get('tiles_done', 0)} of {output.info.get('tiles_total')} tiles are done and kept, marked "
            "incomplete; free some space and rerun with resume=True (napari-sam segment --resume) to continue."
        )
    else:
        kept = "nothing was written there (an existing output is unchanged); free some space and run again."
    return f"The disk is full while writing {where} ({error.strerror}): {kept}"


def load_model_any(model: Any, device: str | torch.device | None = None) -> torch.nn.Module:
    """A SAM ``nn.Module`` from a module (returned as is), a zoo name or a checkpoint path.

    Parameters
    ----------
    model
        A loaded model, a zoo name (``"vit_b"``) or a checkpoint file.
    device
        Where a loaded-here model goes (None: the best available); a module is not moved.

    Returns
    -------
    torch.nn.Module
        The model.
    """
    if isinstance(model, (str, os.PathLike)):
        from napari_sam.model import load_model

        return load_model(model, device=device, progress=False)
    return model


class _PlaneView:
    """``array[z]`` without reading the plane: slicing goes to the underlying (Z, H, W[, C]) array."""

    def __init__(self, array, z: int):
        self.array, self.z = array, z
        self.shape = tuple(array.shape[1:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.array[(self.z, *key)]

    def __setitem__(self, key, value):
        key = key if isinstance(key, tuple) else (key,)
        self.array[(self.z, *key)] = value


def segment_everything(
    image: Any,
    model: Any,
    tile_shape: int | tuple[int, int] | None = None,
    halo: int | tuple[int, int] | None = None,
    points_per_side: int = _DEFAULTS.points_per_side,
    pred_iou_thresh: float = _DEFAULTS.pred_iou_thresh,
    stability_thresh: float = _DEFAULTS.stability_thresh,
    min_area: int = _DEFAULTS.min_area,
    nms_thresh: float = _DEFAULTS.nms_thresh,
    nested_thresh: float | None = _DEFAULTS.nested_thresh,
    points_per_batch: int | None = _DEFAULTS.points_per_batch,
    out: Any = None,
    scheduler: Any = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
    precision: str = "auto",
    tile_offset: int | tuple[int, int] = 0,
    encoder_batch: int | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    report: FilterReport | None = None,
    method: str | None = None,
    instance_params: InstanceParams | None = None,
) -> Any:
    """Automatic instance segmentation of an image of any size; returns int32 labels, 0 = background.

    Parameters
    ----------
    image
        (H, W), (H, W, C<=4), (Z, H, W) or (Z, H, W, C) array-like (numpy, dask, zarr,
        memory-mapped TIFF) or a path (.zarr, .tif, .npy, ...); stacks are segmented slice
        by slice with ids unique across slices.
    model
        A SAM ``nn.Module``, a zoo name or a checkpoint path.
    tile_shape
        Side(s) of the windows the model sees, in pixels; default and minimum the model's
        input size.
    halo
        Context INSIDE each window: windows of ``tile_shape`` overlap by ``2 * halo`` and
        own cores of ``tile_shape - 2 * halo`` pixels; default ``tile_shape // 8``. See
        ``napari_sam.engine.automatic.tiling`` for how to size both.
    points_per_side, pred_iou_thresh, stability_thresh, min_area, nms_thresh, nested_thresh, points_per_batch
        Mask generation (method "amg"); defaults and meaning in :class:`AutomaticParams`.
    out
        None (a numpy array), a path ending in .zarr / .tif / .tiff (written on disk,
        returned opened) or an existing zero-filled array of the label shape.
    scheduler
        None (this process) or a ``dask.distributed`` scheduler address / ``Client``.
    progress
        Called with (tiles done, tiles total) after each tile.
    device, precision
        Where and how the model runs (``Predictor``); ``device`` None picks the best available.
    tile_offset
        Shift the seams by this many pixels (one value or (rows, cols)); the result should
        not depend on it.
    encoder_batch
        Windows per image-encoder call in a local run (default 1 on CPU, 4 on GPU).
    overwrite
        Replace an existing ``out`` path. The new result is written beside it under a
        temporary name and swapped in only once complete; the input is never replaced.
    resume
        Continue the interrupted zarr run at ``out`` (started with the same settings, which
        are checked): finished tiles are not segmented again. A complete run is returned as is.
    report
        A :class:`~napari_sam.engine.automatic.diagnostics.FilterReport` to fill: how many
        masks each filter rejected over all tiles and the score distributions, with
        ``describe()`` and ``suggest()`` saying why little was found and which thresholds
        to try (tiles done before a resumed run are not counted). Method "amg" only.
    method
        ``"instance"``: the model's instance decoder (foreground and distance maps, one pass
        per tile) and a seeded watershed, about a decoder pass instead of a thousand prompts
        per tile; ``"amg"``: masks from a grid of SAM point prompts; None: ``"instance"`` when
        the model has an instance decoder (``model.instance_decoder``), else ``"amg"``.
        Tiling, stitching, outputs, resuming and Dask work the same for both.
    instance_params
        Settings of instance mode; default ``InstanceParams()``
        (:mod:`napari_sam.engine.automatic.instance`, where their defaults live).

    Returns
    -------
    The labels, (H, W) or (Z, H, W) int32: a numpy array, ``out`` itself, or the zarr /
    TIFF at ``out`` opened.

    Raises
    ------
    InputError
        Bad image or settings; ``out`` exists (without ``overwrite`` / ``resume``), is the
        input or overlaps it, or its folder is missing or read-only; a TIFF does not fit on
        the disk; a damaged image file; a full disk during the run; an unknown ``method``,
        or ``"instance"`` with a model that has no instance decoder.

    Notes
    -----
    An interrupted or failed run never leaves a TIFF at ``out``. A new zarr ``out`` is
    written in place with ``attrs["napari_sam"]["complete"]`` false until the end (and the
    tiles done): interrupted after some tiles it is kept for ``resume=True``, before any it
    is removed. Replacing an existing output (``overwrite``) keeps it untouched until the
    new one is complete.
    """
    params = AutomaticParams(
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_thresh=stability_thresh,
        nms_thresh=nms_thresh,
        nested_thresh=nested_thresh,
        min_area=min_area,
    )
    steps = segment_everything_steps(
        image, model, tile_shape, halo, params, out, scheduler, device, precision,
        tile_offset=tile_offset, encoder_batch=encoder_batch, overwrite=overwrite, resume=resume, report=report,
        method=method, instance_params=instance_params,
    )
    return run_steps(steps, progress)


def run_steps(steps: Generator[tuple[int, int], None, Any], progress: ProgressCallback | None = None) -> Any:
    """Drive a :func:`segment_everything_steps` generator to its end, reporting to ``progress``.

    If ``progress`` raises (e.g. ``KeyboardInterrupt``), the generator is closed, so its output
    is left as after an interruption (see :func:`segment_everything`), before the error propagates.

    Parameters
    ----------
    steps
        The generator; it yields ``(tiles done, tiles total)`` and returns the labels.
    progress
        Called with ``(done, total)`` after each tile, or None.

    Returns
    -------
    Any
        What the generator returns: the label array (numpy, zarr or memory-mapped TIFF).
    """
    try:
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(done, total)
    finally:
        steps.close()
