"""``napari-sam finetune``: fine-tune or train a SAM model on images with instance labels.

The training options come from ``FinetuneOptions`` (defaults, checks and help texts in
one place, see ``napari_sam.engine.training.options``); this module adds the data,
the starting model and the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_sam.cli.errors import UsageError
from napari_sam.engine.training.options import add_finetune_arguments, options_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand to the ``napari-sam`` parser's ``subparsers``.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers`` returned; the new parser's ``run`` default is :func:`run`.
    """
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune (or train) a SAM model on images with instance labels",
        description=(
            "Fine-tune a SAM model on a folder of images and a folder of instance label images "
            "(TIFF/PNG, matched by file name). Saves the weights in the official SAM layout at --output "
            "when the run is complete, and a resumable train state beside it every --checkpoint-every steps."
        ),
    )
    p.add_argument("--images", type=Path, required=True, help="folder of training images")
    p.add_argument("--labels", type=Path, required=True, help="folder of instance label images")
    p.add_argument("--val-images", type=Path, help="folder of validation images")
    p.add_argument("--val-labels", type=Path, help="folder of validation label images")
    p.add_argument("--output", type=Path, required=True, help="checkpoint file to write (.pt/.pth)")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", help="start from this checkpoint file or model-zoo name")
    start.add_argument("--config", help="start from random weights of this architecture (e.g. vit_b, sam2.1_hiera_tiny)")
    p.add_argument("--quiet", action="store_true", help="print only validation and checkpoint lines")
    add_finetune_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Fine-tune as ``args`` say; returns the exit status (errors are raised for ``main`` to print).

    The output is checked before any slow loading; progress lines go to stdout.

    Parameters
    ----------
    args
        The parsed options of the ``finetune`` subcommand (data folders, ``--output``,
        ``--model`` or ``--config``, and the ``FinetuneOptions`` fields).

    Returns
    -------
    int
        0 once the weights are saved at ``--output``.

    Raises
    ------
    UsageError
        Only one of ``--val-images`` / ``--val-labels``, or an unknown ``--config``.
    InputError
        Bad options, data or output (see ``options_from_args``, ``check_checkpoint_target``,
        ``load_folder_pairs``), or a training run that diverged.
    CheckpointError, DownloadError, DeviceError
        The starting model could not be loaded.
    """
    from napari_sam.engine.training.data import load_folder_pairs
    from napari_sam.engine.training.loop import finetune
    from napari_sam.engine.training.state import check_checkpoint_target

    if (args.val_images is None) != (args.val_labels is None):
        raise UsageError("--val-images and --val-labels go together.")
    options = options_from_args(args)
    check_checkpoint_target(args.output, args.resume, args.overwrite)  # before any slow loading
    train = load_folder_pairs(args.images, args.labels)
    val = load_folder_pairs(args.val_images, args.val_labels) if args.val_images else None
    model = _starting_model(args)
    print(f"fine-tuning {model.config.name} on {len(train)} images"
          + (f", validating on {len(val)}" if val else ""), flush=True)
    for progress in finetune(model, train, val, options, checkpoint_path=args.output, resume=args.resume,
                             overwrite=args.overwrite):
        if not args.quiet or progress.validation or progress.checkpoint or progress.done:
            print(progress.describe(), flush=True)
    print(f"saved {args.output}", flush=True)
    return 0


def _starting_model(args: argparse.Namespace):
    import torch

    from napari_sam.model import load_model
    from napari_sam.model.checkpoint import build_model
    from napari_sam.model.config import ALL_CONFIGS

    if args.config:
        if args.config not in ALL_CONFIGS:  # SAM and SAM 2 architectures
            raise UsageError(f"Unknown config {args.config!r}; choose one of {', '.join(ALL_CONFIGS)}.")
        torch.manual_seed(args.seed)
        return build_model(ALL_CONFIGS[args.config])
    return load_model(args.model, device="cpu")
