"""``segment_everything``: automatic instance segmentation of a 2D image or stack of any size.

The image is cut into tiles with a halo (``tiling``), every tile is segmented
automatically (``automatic``) here or on a Dask cluster (``distributed``), and the
tiles' objects are stitched so that each object appears exactly once
(``stitching``, which documents the seam rule). Only a few windows and one row of
tiles' objects are in memory at a time; the output can be a zarr array or a
memory-mapped TIFF on disk, so images larger than memory work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

import numpy as np

from napari_sam.engine.automatic.params import AutomaticParams
from napari_sam.engine.automatic.stitching import SAME_OBJECT_OVERLAP
from napari_sam.engine.automatic.tiling import global_intensity_range, make_tile_grid
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import open_image, split_channels
from napari_sam.engine.io.outputs import create_output

ProgressCallback = Callable[[int, int], None]


def segment_everything_steps(
    image,
    model,
    tile_shape=None,
    halo=None,
    params: AutomaticParams | None = None,
    out=None,
    scheduler=None,
    device: str | None = None,
    precision: str = "auto",
    same_object_overlap: float = SAME_OBJECT_OVERLAP,
    tile_offset=0,
    encoder_batch: int | None = None,
) -> Generator[tuple[int, int], None, object]:
    """Generator form of :func:`segment_everything`: yields ``(tiles done, tiles total)`` after each tile
    and returns the label array (``StopIteration.value``). Closing it stops the work between tiles.

    ``encoder_batch``: windows per image-encoder call in a local run (default 1 on CPU, 4 on GPU).
    """
    from napari_sam.engine.automatic.stitching import Stitcher

    params = params or AutomaticParams()
    params.validate()
    image = open_image(image)
    shape = tuple(int(s) for s in getattr(image, "shape", ()))
    if not shape:
        raise InputError(f"Expected an image array or a path, got {type(image).__name__}.")
    stack_axes, has_channels = split_channels(shape)
    plane = shape[stack_axes : stack_axes + 2]
    if any(s == 0 for s in shape):
        raise InputError(f"The image is empty (shape {shape}).")
    if np.dtype(image.dtype).kind not in "biuf":
        raise InputError(f"Unsupported image dtype {image.dtype}; expected numbers or booleans.")

    if isinstance(model, (str, os.PathLike)) and scheduler is None:
        model = load_model_any(model, device)
    config = model.config if not isinstance(model, (str, os.PathLike)) else _config_of(model)
    stride = config.encoder.stride
    if min(plane) < stride:
        raise InputError(
            f"The image plane {plane} is narrower than {stride} pixels (one cell of the model's embedding): "
            "too thin to segment automatically."
        )
    tile_shape = tile_shape if tile_shape is not None else config.img_size
    if halo is None:
        halo = np.asarray(np.broadcast_to(tile_shape, (2,))) // 8
    grid = make_tile_grid(plane, tile_shape, halo, min_tile=config.img_size, offset=tile_offset)
    value_range = global_intensity_range(image, has_channels)
    output = create_output(out, shape[: stack_axes + 2])
    if scheduler is None:
        from napari_sam.engine.predict.predictor import Predictor

        predictor = Predictor(model, device=device, precision=precision)
        batch = encoder_batch if encoder_batch is not None else default_encoder_batch(predictor.device)
        runner = _LocalTileRunner(predictor, batch)
    else:
        try:
            from napari_sam.engine.automatic.dask_runner import DaskTileRunner
        except ImportError as err:
            raise InputError(
                "Running on a Dask cluster (scheduler=...) needs the 'distributed' package: "
                "pip install 'napari-sam[dask]' (or pip install distributed)."
            ) from err
        runner = DaskTileRunner(scheduler, model, device, precision)

    planes = range(shape[0]) if stack_axes else [None]
    total = len(grid) * len(planes)
    done = 0
    label_offset = 0
    with runner:
        for z in planes:
            plane_image = image if z is None else _PlaneView(image, z)
            plane_out = output if z is None else _PlaneView(output, z)
            stitcher = Stitcher(grid, plane_out, same_object_overlap, label_offset)
            for index, tile_labels in runner.iter_tile_labels(plane_image, grid, params, value_range):
                stitcher.add(index, np.asarray(tile_labels, dtype=np.int32))
                done += 1
                yield done, total
            if not stitcher.done:  # pragma: no cover - every tile arrives exactly once
                raise RuntimeError("Not every tile was stitched.")
            label_offset = stitcher.labels_used
    return output


def load_model_any(model, device=None):
    """A SAM ``nn.Module`` from a module (returned as is), a zoo name or a checkpoint path."""
    if isinstance(model, (str, os.PathLike)):
        from napari_sam.model import load_model

        return load_model(model, device=device, progress=False)
    return model


class _LocalTileRunner:
    """Runs tile tasks here in tile order, ``encoder_batch`` windows per image-encoder call."""

    def __init__(self, predictor, encoder_batch: int = 1):
        self.predictor = predictor
        self.encoder_batch = max(1, int(encoder_batch))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def iter_tile_labels(self, image, grid, params, intensity_range=None):
        from napari_sam.engine.automatic.tiling import (
            embed_windows,
            segment_tile,
            window_is_blank,
        )
        from napari_sam.engine.io.images import read_window

        pending = []

        def run_pending():
            busy = [(t, p) for t, p in pending if not window_is_blank(p, intensity_range)]
            embeddings = embed_windows(self.predictor, [p for _, p in busy], intensity_range) if busy else []
            by_index = {t.index: e for (t, _), e in zip(busy, embeddings)}
            for tile, pixels in pending:
                yield tile.index, segment_tile(
                    self.predictor, pixels, params, intensity_range, tile.window, grid.tile_shape,
                    embedding=by_index.get(tile.index),
                )
            pending.clear()

        for tile in grid:
            pending.append((tile, read_window(image, tile.window)))
            if len(pending) >= self.encoder_batch:
                yield from run_pending()
        if pending:
            yield from run_pending()


def default_encoder_batch(device) -> int:
    """Windows per image-encoder call: batches pay off on GPUs; on a CPU one window already fills every core."""
    return 1 if str(device).startswith("cpu") else 4


def _config_of(name_or_path):
    from napari_sam.model import load_model

    return load_model(str(name_or_path), device="cpu").config


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
    image,
    model,
    tile_shape=None,
    halo=None,
    points_per_side: int = 32,
    pred_iou_thresh: float = 0.88,
    stability_thresh: float = 0.95,
    min_area: int = 0,
    nms_thresh: float = 0.7,
    nested_thresh: float | None = None,
    points_per_batch: int | None = None,
    out=None,
    scheduler=None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
    precision: str = "auto",
    tile_offset=0,
    encoder_batch: int | None = None,
):
    """Automatic instance segmentation of an image of any size; returns int32 labels, 0 = background.

    image: (H, W), (H, W, C<=4), (Z, H, W) or (Z, H, W, C) array-like (numpy, dask,
    zarr, memory-mapped TIFF) or a path (.zarr, .tif, .npy); stacks are segmented
    slice by slice with ids unique across slices.
    model: a SAM ``nn.Module``, a zoo name or a checkpoint path.
    tile_shape: tile side(s) in pixels, default and minimum the model's input size;
    halo: overlap added around each tile's core, default tile // 8 (make it at least
    the diameter of the largest objects). Other parameters: see ``AutomaticParams``.
    out: None (numpy array), a path ending in .zarr / .tif (written on disk, returned
    opened) or an existing zero-filled array. scheduler: None (this process) or a
    ``dask.distributed`` scheduler address / ``Client``. progress: called with
    (tiles done, tiles total). tile_offset: shift the seams by this many pixels (one value or
    (rows, cols)); the result should not depend on it. encoder_batch: windows per image-encoder
    call in a local run (default 1 on CPU, 4 on GPU).
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
        tile_offset=tile_offset, encoder_batch=encoder_batch,
    )
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)
