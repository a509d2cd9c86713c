"""Settings of a fine-tuning run and the reports it yields; the command-line options built from them.

:class:`FinetuneOptions` is the one place where a setting's default, its check and its
help text live. ``napari-sam finetune`` and ``tools/train_tiny_model.py`` build their
argument parsers from it with :func:`add_finetune_arguments` and read the parsed
arguments back with :func:`options_from_args`. No torch import here: the CLI's
``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from napari_sam.engine.errors import InputError

MASK_LOSSES = ("focal_dice", "bce_dice")
# Kinds of first prompt, in the order of ``FinetuneOptions.prompt_probabilities``.
PROMPT_KINDS = ("box", "point", "point_box", "points")


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field carrying its help text (and optional command-line ``flags``/``choices``)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class FinetuneOptions:
    """Settings of a fine-tuning run (defaults suit fine-tuning a pretrained model).

    Each field's help text is in its metadata (``fields(FinetuneOptions)[i].metadata["help"]``);
    ``napari-sam finetune --help`` lists them all. Invalid values raise ``InputError``.
    """

    steps: int = _option(1000, "number of optimizer steps")
    images_per_step: int = _option(4, "images per step (the batch)")
    objects_per_image: int = _option(8, "objects prompted per image and step")
    correction_iterations: int = _option(2, "decoder passes after the first, each with one more correction point")
    learning_rate: float = _option(1e-4, "peak learning rate (AdamW)", flags=("--lr", "--learning-rate"))
    min_learning_rate_ratio: float = _option(
        0.05, "the cosine schedule ends at learning_rate times this ratio (0..1)")
    warmup_steps: int = _option(50, "steps of linear learning-rate warm-up")
    weight_decay: float = _option(0.01, "AdamW weight decay")
    grad_clip: float = _option(1.0, "clip the gradient norm to this (0: no clipping)")
    freeze_image_encoder: bool = _option(
        False, "train only prompt encoder and mask decoder (much faster; embeddings computed without gradients)")
    mask_loss: str = _option("focal_dice", "mask loss: focal or BCE, plus dice", choices=MASK_LOSSES)
    focal_weight: float = _option(20.0, "weight of focal (or BCE) against dice (20:1 as in SAM)")
    iou_loss_weight: float = _option(1.0, "weight of the IoU head's loss (MSE against the actual IoU)")
    decoder_loss_weight: float = _option(
        1.0, "weight of the instance decoder's loss (models with an instance decoder train it jointly, on the same "
             "image embeddings; 0: the decoder is left as it is)")
    prompt_probabilities: tuple[float, float, float, float] = _option(
        (0.3, 0.3, 0.2, 0.2), "how often the first prompt is a box, a point, point + box, or several points")
    multimask_probability: float = _option(
        0.8, "how often a single point is trained with the three ambiguity-aware outputs (else the single one)")
    mask_input_probability: float = _option(
        0.5, "how often a correction pass also gets the previous low-res logits as mask input")
    box_jitter: float = _option(
        0.1, "box edges move by Gaussian noise of this fraction of the box size (at most 20 pixels)")
    min_object_size: int = _option(
        8, "objects with fewer pixels are neither trained on (model input frame) nor validated (image frame)")
    augment: bool = _option(True, "random flips and 90-degree rotations")
    crop_size: int | None = _option(
        None, "train on random windows of this many pixels of large images (default: whole images, resized)")
    validate_every: int = _option(100, "validate every this many steps (and at the end)")
    validation_objects_per_image: int = _option(20, "objects measured per validation image (largest first)")
    checkpoint_every: int = _option(500, "save a resumable train state every this many steps")
    seed: int = _option(0, "random seed of images, prompts and augmentation")
    device: str | None = _option(
        None, "cpu, cuda, cuda:N or mps (default: the best available)")
    precision: str = _option(
        "fp32", "autocast of the forward pass: fp32, bf16 (CPUs with bf16, recent GPUs), fp16 (GPU) or auto")

    def __post_init__(self) -> None:
        self.prompt_probabilities = tuple(self.prompt_probabilities)
        for problem in _problems(self):
            raise InputError(f"Invalid fine-tuning option: {problem}.")


def _problems(options: FinetuneOptions) -> typing.Iterator[str]:
    """What is wrong with ``options``, one phrase per problem (the first is reported)."""
    from napari_sam.engine.predict.device import (
        PRECISIONS,  # imports torch: only when options are made
    )

    at_least = {"steps": 1, "images_per_step": 1, "objects_per_image": 1, "correction_iterations": 0,
                "warmup_steps": 0, "validate_every": 1, "validation_objects_per_image": 1, "checkpoint_every": 1,
                "min_object_size": 1, "crop_size": 1}
    for name, low in at_least.items():
        value = getattr(options, name)
        if value is not None and value < low:
            yield f"{name} must be at least {low}; got {value}"
    if not (math.isfinite(options.learning_rate) and options.learning_rate > 0):
        yield f"learning_rate must be a positive number; got {options.learning_rate}"
    non_negative = ("weight_decay", "grad_clip", "focal_weight", "iou_loss_weight", "decoder_loss_weight",
                    "box_jitter")
    for name in non_negative:
        if not getattr(options, name) >= 0:  # also catches NaN
            yield f"{name} must be >= 0; got {getattr(options, name)}"
    for name in ("min_learning_rate_ratio", "multimask_probability", "mask_input_probability"):
        if not 0 <= getattr(options, name) <= 1:
            yield f"{name} must lie in 0..1; got {getattr(options, name)}"
    if options.mask_loss not in MASK_LOSSES:
        yield f"mask_loss must be one of {', '.join(MASK_LOSSES)}; got {options.mask_loss!r}"
    if options.precision not in PRECISIONS:
        yield f"precision must be one of {', '.join(PRECISIONS)}; got {options.precision!r}"
    probabilities = options.prompt_probabilities
    if len(probabilities) != len(PROMPT_KINDS) or not all(p >= 0 for p in probabilities) or sum(probabilities) <= 0:
        yield (f"prompt_probabilities must be {len(PROMPT_KINDS)} non-negative numbers, not all zero "
               f"({', '.join(PROMPT_KINDS)}); got {probabilities}")


@dataclass
class FinetuneProgress:
    """One report of a running fine-tuning.

    ``loss`` etc. are the last step's (None in the report made before the first step);
    ``validation`` holds mean IoUs (``box``, ``point``, ``point_box``, ``mean``) when
    the model was just validated; ``checkpoint`` the file written at this step, if any
    (the resumable train state during the run, the final weights at the end).
    """

    step: int
    total_steps: int
    loss: float | None = None
    mask_loss: float | None = None
    iou_loss: float | None = None
    train_iou: float | None = None
    """Mean IoU of the step's last decoder pass against its targets (a cheap running quality measure)."""
    decoder_loss: float | None = None
    """The instance decoder's loss (models with an instance decoder; None otherwise)."""
    learning_rate: float | None = None
    elapsed_s: float = 0.0
    validation: dict[str, float] | None = None
    checkpoint: str | None = None
    done: bool = False

    def describe(self) -> str:
        """One line for logs and status bars."""
        parts = [f"step {self.step}/{self.total_steps}"]
        if self.loss is not None:
            decoder = f", decoder {self.decoder_loss:.4f}" if self.decoder_loss is not None else ""
            parts.append(f"loss {self.loss:.4f} (mask {self.mask_loss:.4f}, iou {self.iou_loss:.4f}{decoder})")
        if self.train_iou is not None:
            parts.append(f"train IoU {self.train_iou:.3f}")
        if self.learning_rate is not None:
            parts.append(f"lr {self.learning_rate:.2e}")
        if self.validation:
            parts.append("val IoU " + ", ".join(f"{k} {v:.3f}" for k, v in self.validation.items()))
        if self.checkpoint:
            parts.append(f"saved {self.checkpoint}")
        parts.append(f"{self.elapsed_s:.0f}s")
        return " | ".join(parts)


# ----------------------------------------------------------------------------- command line


def _argument_spec(name: str, kind: Any, default: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``add_argument`` keywords for one field of type ``kind``."""
    spec: dict[str, Any] = {"dest": name, "default": default, "help": metadata["help"]}
    if default is not None:
        spec["help"] += " (default: %(default)s)"
    if kind is bool:
        spec["action"] = argparse.BooleanOptionalAction
        return spec
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is tuple:
        spec.update(nargs=len(args), type=args[0], metavar=tuple(p.upper() for p in PROMPT_KINDS))
    else:
        spec["type"] = args[0] if args else kind
    if "choices" in metadata:
        spec["choices"] = metadata["choices"]
    return spec


def add_finetune_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None) -> None:
    """Add every :class:`FinetuneOptions` field, and ``--resume`` / ``--overwrite``, to ``parser``.

    Parameters
    ----------
    parser
        The parser (or subcommand parser) to extend.
    defaults
        Other defaults for some fields (a recipe, e.g. for training from scratch), by
        field name; their values are checked with the parsed options.

    Notes
    -----
    Field ``images_per_step`` becomes ``--images-per-step``; booleans get a
    ``--no-`` form (``--no-augment``); ``learning_rate`` is also ``--lr``. Read the
    parsed arguments back with :func:`options_from_args`.

    Raises
    ------
    TypeError
        ``defaults`` names something that is not a field of :class:`FinetuneOptions`.
    """
    chosen = {option.name: option.default for option in fields(FinetuneOptions)}
    unknown = set(defaults or {}) - set(chosen)
    if unknown:
        raise TypeError(f"Not fields of FinetuneOptions: {', '.join(sorted(unknown))}.")
    chosen.update(defaults or {})
    hints = typing.get_type_hints(FinetuneOptions)
    group = parser.add_argument_group("fine-tuning options")
    for option in fields(FinetuneOptions):
        flags = option.metadata.get("flags", ("--" + option.name.replace("_", "-"),))
        group.add_argument(*flags, **_argument_spec(option.name, hints[option.name], chosen[option.name],
                                                    option.metadata))
    run = parser.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true",
                     help="continue the run saved at --output (from its .train_state.pt file)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing --output (the old file stays until the new run is complete)")


def options_from_args(args: argparse.Namespace) -> FinetuneOptions:
    """The :class:`FinetuneOptions` of arguments parsed by a parser built with :func:`add_finetune_arguments`.

    Parameters
    ----------
    args
        The parsed arguments; one attribute per field (extra ones are ignored).

    Returns
    -------
    FinetuneOptions
        The checked options.

    Raises
    ------
    InputError
        A value is invalid (the message names the option and the first problem).
    """
    return FinetuneOptions(**{option.name: getattr(args, option.name) for option in fields(FinetuneOptions)})


__all__ = [
    "MASK_LOSSES",
    "PROMPT_KINDS",
    "FinetuneOptions",
    "FinetuneProgress",
    "add_finetune_arguments",
    "options_from_args",
]
