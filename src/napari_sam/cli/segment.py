"""``napari-sam segment``: tiled automatic segmentation of an image of any size."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_sam.cli.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment everything in an image of any size (tiled automatic segmentation)",
        description=(
            "Automatic instance segmentation of a 2D image or a stack (slice by slice) of any size: "
            "the image is tiled with a halo, every tile is segmented with a point grid, and objects are "
            "stitched so that each appears exactly once. Input: TIFF (memory-mapped), zarr, .npy or any "
            "image file; output: labels as TIFF (memory-mapped) or zarr, written without holding the "
            "image in memory."
        ),
    )
    p.add_argument("image", type=Path, help="input image: .tif/.tiff, .zarr, .npy, .png, ...")
    p.add_argument("--model", required=True, help="model-zoo name or checkpoint file")
    p.add_argument("--out", type=Path, required=True, help="output labels: .tif/.tiff or .zarr")
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default and minimum: the model's input size)")
    p.add_argument("--halo", type=int, help="overlap around each tile's core (default: tile size / 8)")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-thresh", type=float, default=0.95)
    p.add_argument("--min-area", type=int, default=0, help="remove objects, holes and specks below this many pixels")
    p.add_argument("--nested-thresh", type=float, help="also suppress masks nested in better ones (e.g. 0.8)")
    p.add_argument("--scheduler", help="dask.distributed scheduler address (tcp://host:8786); default: this process")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _progress_printer(disabled: bool):
    """``(update(done, total), close())`` drawing a progress bar on stderr (tqdm when installed)."""
    if disabled:
        return (lambda done, total: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:  # a plain one-line bar
        def update(done, total):
            width = 30
            filled = int(width * done / max(total, 1))
            end = "\n" if done >= total else ""
            bar = "#" * filled + "." * (width - filled)
            print(f"\rtiles [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)

        return update, (lambda: None)
    bar = tqdm(total=0, unit="tile", desc="segment", file=sys.stderr)

    def update(done, total):
        bar.total = total
        bar.update(done - bar.n)

    return update, bar.close


def run(args: argparse.Namespace) -> int:
    import shutil
    import time

    from napari_sam.engine.automatic.segment import load_model_any, segment_everything

    suffix = args.out.name.lower()
    if not suffix.endswith((".tif", ".tiff", ".zarr")):
        raise UsageError(f"--out must end in .tif, .tiff or .zarr, got {args.out}.")
    if args.out.exists():
        if not args.overwrite:
            raise UsageError(f"{args.out} exists; pass --overwrite to replace it.")
        if args.out.is_dir():
            shutil.rmtree(args.out)
        else:
            args.out.unlink()
    if not args.image.exists():
        raise UsageError(f"No such image: {args.image}")
    # a local run loads the model once here; a cluster's workers load it from the name / file themselves
    model = args.model if args.scheduler else load_model_any(args.model, device=args.device)
    update, close = _progress_printer(args.no_progress)
    start = time.perf_counter()
    try:
        labels = segment_everything(
            args.image,
            model,
            tile_shape=args.tile_size,
            halo=args.halo,
            points_per_side=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_thresh=args.stability_thresh,
            min_area=args.min_area,
            nested_thresh=args.nested_thresh,
            out=args.out,
            scheduler=args.scheduler,
            progress=update,
            device=args.device,
            precision=args.precision,
        )
    finally:
        close()
    count = _max_label(labels)
    if hasattr(labels, "flush"):  # memory-mapped TIFF
        labels.flush()
    del labels
    print(f"{count} objects in {time.perf_counter() - start:.1f} s -> {args.out}", flush=True)
    return 0


def _max_label(labels) -> int:
    """The highest label, read in blocks of rows (the labels may be larger than memory)."""
    import numpy as np

    step = max(1, (1 << 24) // max(1, int(np.prod(labels.shape[1:]))))
    blocks = (np.asarray(labels[i : i + step]) for i in range(0, labels.shape[0], step))
    return max((int(block.max(initial=0)) for block in blocks), default=0)
