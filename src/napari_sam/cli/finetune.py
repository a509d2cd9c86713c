"""``napari-sam finetune``: fine-tune or train a SAM model on images with instance labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_sam.cli.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from napari_sam.engine.training.data import load_folder_pairs
    from napari_sam.engine.training.loop import FinetuneOptions, finetune

    if (args.val_images is None) != (args.val_labels is None):
        raise UsageError("--val-images and --val-labels go together.")
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
            raise UsageError(f"Unknown config {args.config!r}; choose one of {', '.join(CONFIGS)}.")
        torch.manual_seed(args.seed)
        return build_sam(args.config)
    return load_model(args.model, device="cpu")
