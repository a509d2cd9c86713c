"""The ``napari-sam`` command line: headless access to the engine.

Subcommands register themselves in ``COMMANDS`` (name -> function that adds its
parser); each parser sets ``run`` to the function executing it. Heavy modules
(torch, the engine) are imported inside those functions, so ``napari-sam --help``
is instant.

    napari-sam finetune --images imgs/ --labels labels/ --output model.pt --model vit_b
    napari-sam segment slide.zarr --model vit_b --out labels.zarr
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    """Register ``add_parser(subparsers)`` as the subcommand ``name``."""

    def register(add_parser: Callable[[argparse._SubParsersAction], None]):
        COMMANDS[name] = add_parser
        return add_parser

    return register


# ----------------------------------------------------------------------------- finetune


@command("finetune")
def _add_finetune(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune (or train) a SAM model on images with instance labels",
        description=(
            "Fine-tune a SAM model on a folder of images and a folder of instance label images "
            "(TIFF/PNG, matched by file name). Saves the weights in the official SAM layout."
        ),
    )
    p.add_argument("--images", type=Path, required=True, help="folder of training images")
    p.add_argument("--labels", type=Path, required=True, help="folder of instance label images")
    p.add_argument("--val-images", type=Path, help="folder of validation images")
    p.add_argument("--val-labels", type=Path, help="folder of validation label images")
    p.add_argument("--output", type=Path, required=True, help="checkpoint file to write (.pt/.pth)")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", help="start from this checkpoint file or model-zoo name")
    start.add_argument("--config", help="start from random weights of this architecture (e.g. vit_b)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--images-per-step", type=int, default=4)
    p.add_argument("--objects-per-image", type=int, default=8)
    p.add_argument("--correction-iterations", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--mask-loss", choices=("focal_dice", "bce_dice"), default="focal_dice")
    p.add_argument("--freeze-image-encoder", action="store_true", help="train only prompt encoder and decoder")
    p.add_argument("--crop-size", type=int, help="train on random windows of this size (pixels) of large images")
    p.add_argument("--no-augment", action="store_true", help="no random flips/rotations")
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"))
    p.add_argument("--resume", action="store_true", help="continue the run saved at --output")
    p.add_argument("--quiet", action="store_true", help="print only validation and checkpoint lines")
    p.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from napari_sam.engine.training.data import load_folder_pairs
    from napari_sam.engine.training.loop import FinetuneOptions, finetune

    if (args.val_images is None) != (args.val_labels is None):
        raise _UsageError("--val-images and --val-labels go together.")
    options = FinetuneOptions(
        steps=args.steps,
        images_per_step=args.images_per_step,
        objects_per_image=args.objects_per_image,
        correction_iterations=args.correction_iterations,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        mask_loss=args.mask_loss,
        freeze_image_encoder=args.freeze_image_encoder,
        crop_size=args.crop_size,
        augment=not args.no_augment,
        validate_every=args.validate_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    train = load_folder_pairs(args.images, args.labels)
    val = load_folder_pairs(args.val_images, args.val_labels) if args.val_images else None
    model = _starting_model(args)
    print(f"fine-tuning {model.config.name} on {len(train)} images"
          + (f", validating on {len(val)}" if val else ""), flush=True)
    for progress in finetune(model, train, val, options, checkpoint_path=args.output, resume=args.resume):
        if not args.quiet or progress.validation or progress.checkpoint or progress.done:
            print(progress.describe(), flush=True)
    print(f"saved {args.output}", flush=True)
    return 0


def _starting_model(args: argparse.Namespace):
    import torch

    from napari_sam.model import CONFIGS, build_sam, load_model

    if args.config:
        if args.config not in CONFIGS:
            raise _UsageError(f"Unknown config {args.config!r}; choose one of {', '.join(CONFIGS)}.")
        torch.manual_seed(args.seed)
        return build_sam(args.config)
    return load_model(args.model, device="cpu")


# ----------------------------------------------------------------------------- segment


@command("segment")
def _add_segment(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=_run_segment)


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


def _run_segment(args: argparse.Namespace) -> int:
    import shutil
    import time

    from napari_sam.engine.automatic.segment import load_model_any, segment_everything

    suffix = args.out.name.lower()
    if not suffix.endswith((".tif", ".tiff", ".zarr")):
        raise _UsageError(f"--out must end in .tif, .tiff or .zarr, got {args.out}.")
    if args.out.exists():
        if not args.overwrite:
            raise _UsageError(f"{args.out} exists; pass --overwrite to replace it.")
        if args.out.is_dir():
            shutil.rmtree(args.out)
        else:
            args.out.unlink()
    if not args.image.exists():
        raise _UsageError(f"No such image: {args.image}")
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


# ----------------------------------------------------------------------------- annotate


@command("annotate")
def _add_annotate(subparsers: argparse._SubParsersAction) -> None:
    from napari_sam._napari.demo import SAMPLES

    p = subparsers.add_parser(
        "annotate",
        help="open napari with the Segment Anything annotator docked",
        description="Open napari with the interactive annotator docked, optionally on a sample image.",
    )
    p.add_argument("--sample", choices=(*SAMPLES, "none"), default="cell", help="sample image to open (default: cell)")
    p.add_argument("--model", default="vit_t", help="zoo name or checkpoint file (default: vit_t, MobileSAM)")
    p.add_argument("--no-load", action="store_true", help="do not load the model at start")
    p.set_defaults(run=_run_annotate)


def _run_annotate(args: argparse.Namespace) -> int:
    from napari_sam._napari.demo import launch

    launch(None if args.sample == "none" else args.sample, args.model, load=not args.no_load)
    return 0


# ----------------------------------------------------------------------------- entry point


class _UsageError(Exception):
    """A problem with the command line itself."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam", description="Segment Anything in napari and on the command line.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in COMMANDS.values():
        add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 bad input, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    from napari_sam.engine.errors import InputError

    try:
        return int(args.run(args) or 0)
    except _UsageError as error:
        parser.error(str(error))  # exits with status 2
    except InputError as error:
        print(f"napari-sam {args.command}: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # checkpoint problems and the like: one clear line, not a traceback
        from napari_sam.model.errors import CheckpointError

        if isinstance(error, CheckpointError):
            print(f"napari-sam {args.command}: error: {error}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
