"""Fine-tuning (or training from scratch) a SAM model on images with instance labels: the loop.

``finetune`` is a generator of :class:`FinetuneProgress` (loss, learning rate and,
periodically, validation IoU), so the CLI and a napari worker can show progress and
stop it. Each step takes a few images, prepares them exactly as the ``Predictor``
does, and trains SAM's interactive recipe on them (``step.training_step_loss``).

The package, one job per module:

* ``options``: :class:`FinetuneOptions` (defaults, checks, help texts, CLI options) and reports;
* ``data``: image/label pairs from folders and arrays, validated; model-input samples;
* ``prompt_sampling``: boxes, points and corrections drawn from object masks;
* ``losses``: focal/BCE + dice and the actual IoU; ``step``: one step's loss;
* ``evaluation``: prompted IoU through the public Predictor (validation and tests);
* ``state``: the run's files (resumable train state, final weights) and their checks;
* ``loop`` (here): the schedule and the loop. The names above are importable from here too.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.training.data import TrainingPair, as_training_pairs
from napari_sam.engine.training.evaluation import (
    evaluate_prompted_iou,
    evaluate_with_predictor,
)
from napari_sam.engine.training.losses import mask_losses
from napari_sam.engine.training.options import (
    MASK_LOSSES,
    PROMPT_KINDS,
    FinetuneOptions,
    FinetuneProgress,
)
from napari_sam.engine.training.state import (
    PathLike,
    check_checkpoint_target,
    divergence_error,
    load_training_state,
    save_final_weights,
    save_training_checkpoint,
    save_training_state,
    training_state_path,
)
from napari_sam.engine.training.step import training_step_loss

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.training.data import PreparedSample


def _step_image_indices(step: int, count: int, per_step: int, seed: int) -> list[int]:
    """Indices of the images used at ``step``: shuffled epochs, reproducible from (seed, step) alone."""
    indices = []
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, position = divmod(slot, count)
        order = np.random.default_rng([seed, epoch, 104729]).permutation(count)
        indices.append(int(order[position]))
    return indices


def _lr_factor(step: int, options: FinetuneOptions) -> float:
    """Linear warm-up, then cosine decay to ``min_learning_rate_ratio``."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    span = max(1, options.steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / span)
    low = options.min_learning_rate_ratio
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _set_train_mode(model, freeze_image_encoder: bool) -> None:
    import torch

    model.train()
    decoder = getattr(model, "instance_decoder", None)
    learning_norms = set(decoder.modules()) if decoder is not None else set()
    for module in model.modules():
        # BatchNorm statistics (TinyViT) are not re-estimated from a handful of images; the instance
        # decoder's are (full-resolution maps give them plenty of pixels, and a new decoder has none yet)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module not in learning_norms:
            module.eval()
    if freeze_image_encoder:
        model.image_encoder.eval()
        for parameter in model.image_encoder.parameters():
            parameter.requires_grad_(False)


def _set_inference_mode(model, options: FinetuneOptions) -> None:
    """Leave the model ready for inference, whether the run finished, failed or was stopped."""
    model.eval()
    if options.freeze_image_encoder:
        for parameter in model.image_encoder.parameters():
            parameter.requires_grad_(True)


def _due(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


@dataclass
class _Run:
    """Everything one run needs between steps."""

    model: torch.nn.Module
    options: FinetuneOptions
    device: torch.device
    autocast_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer
    trainable: list
    train_pairs: Sequence[TrainingPair]
    val_pairs: Sequence[TrainingPair] | None
    checkpoint_path: PathLike | None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the run's precision (a no-op for fp32)."""
        from napari_sam.engine.predict.device import autocast

        return autocast(self.device, self.autocast_dtype)

    def validate(self) -> dict[str, float] | None:
        """Prompted IoU on the validation pairs (None without them); the model goes back to training mode."""
        if self.val_pairs is None:
            return None
        options = self.options
        result = evaluate_prompted_iou(self.model, self.val_pairs, self.device, options.validation_objects_per_image,
                                       options.min_object_size, options.precision)
        _set_train_mode(self.model, options.freeze_image_encoder)
        return result

    def samples(self, step: int, rng: np.random.Generator) -> list[PreparedSample]:
        """The step's images, augmented and prepared as model input.

        Parameters
        ----------
        step
            The 0-based step; with the seed it chooses the images.
        rng
            The step's random source of crops and augmentation.

        Returns
        -------
        list of PreparedSample
            ``images_per_step`` samples on the run's device.
        """
        from napari_sam.engine.training.data import prepare_sample

        options = self.options
        indices = _step_image_indices(step, len(self.train_pairs), options.images_per_step, options.seed)
        normalize = getattr(self.model, "normalize_input", None)  # SAM 2 brings its own input transform
        return [prepare_sample(self.train_pairs[i], self.model.config, self.device, rng, options.augment,
                               options.crop_size, normalize) for i in indices]

    def train_step(self, step: int) -> FinetuneProgress:
        """One optimizer step; stops the run (``divergence_error``) on a non-finite loss or gradient.

        Parameters
        ----------
        step
            The 0-based step; it sets the learning rate and seeds the step's randomness.

        Returns
        -------
        FinetuneProgress
            The report after the step (``step + 1``), without validation or checkpoint.

        Raises
        ------
        InputError
            The loss or the gradient norm is NaN or infinite (nothing is updated).
        """
        import torch

        options = self.options
        rng = np.random.default_rng([options.seed, step, 31])
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(rng.integers(2**62)))
        samples = self.samples(step, rng)
        learning_rate = options.learning_rate * _lr_factor(step, options)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        loss, parts = training_step_loss(self.model, samples, options, rng, generator, self.autocast)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise divergence_error(step + 1, options, "the loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, options.grad_clip or math.inf)
        if not math.isfinite(float(norm)):
            raise divergence_error(step + 1, options, "the gradients")
        self.optimizer.step()
        return FinetuneProgress(step + 1, options.steps, loss=loss_value, learning_rate=learning_rate,
                                done=step + 1 == options.steps, **parts)

    def save(self, step: int) -> str | None:
        """Write what is due after ``step``: the train state, and at the end also the final weights.

        Parameters
        ----------
        step
            Steps done.

        Returns
        -------
        str or None
            The file written (the final weights at the end), or None.

        Raises
        ------
        InputError
            The weights are NaN or infinite (nothing is written).
        """
        options = self.options
        if self.checkpoint_path is None:
            return None
        if step >= options.steps:
            return str(save_training_checkpoint(self.model, self.optimizer, step, options, self.checkpoint_path))
        if step % options.checkpoint_every == 0:
            return str(save_training_state(self.model, self.optimizer, step, options, self.checkpoint_path))
        return None


def _start_run(model, train_pairs, val_pairs, options: FinetuneOptions, checkpoint_path, resume: bool):
    """Put the model on its device in training mode, make the optimizer, restore a resumed run; -> (run, step)."""
    import torch

    from napari_sam.engine.predict.device import resolve_precision, select_device

    device = select_device(options.device)
    autocast_dtype = resolve_precision(options.precision, device)
    model.to(device)
    _set_train_mode(model, options.freeze_image_encoder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise InputError("The model has no trainable parameters.")
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)
    start_step = 0
    if resume:
        start_step = load_training_state(model, optimizer, checkpoint_path, options, device)
        _set_train_mode(model, options.freeze_image_encoder)
    run = _Run(model, options, device, autocast_dtype, optimizer, trainable, train_pairs, val_pairs, checkpoint_path)
    return run, start_step


def _training_loop(run: _Run, start_step: int) -> Iterator[FinetuneProgress]:
    options = run.options
    started = time.perf_counter()
    yield FinetuneProgress(start_step, options.steps, validation=run.validate(), elapsed_s=0.0)
    if start_step >= options.steps:  # resumed after the last step: make sure the final weights are written
        saved = save_final_weights(run.model, start_step, options, run.checkpoint_path)
        yield FinetuneProgress(start_step, options.steps, checkpoint=str(saved), done=True)
        return
    for step in range(start_step, options.steps):
        report = run.train_step(step)
        if run.val_pairs is not None and _due(step + 1, options.validate_every, options.steps):
            report.validation = run.validate()
        report.checkpoint = run.save(step + 1)
        report.elapsed_s = time.perf_counter() - started
        yield report


def _finetune(model, train_pairs, val_pairs, options, checkpoint_path, resume) -> Iterator[FinetuneProgress]:
    try:
        run, start_step = _start_run(model, train_pairs, val_pairs, options, checkpoint_path, resume)
        yield from _training_loop(run, start_step)
    finally:
        _set_inference_mode(model, options)


def finetune(
    model: torch.nn.Module,
    train_data: Sequence,
    val_data: Sequence | None = None,
    options: FinetuneOptions | None = None,
    checkpoint_path: PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Iterator[FinetuneProgress]:
    """Fine-tune ``model`` in place on ``train_data``; an iterator of progress reports.

    Parameters
    ----------
    model
        The SAM model to train (moved to ``options.device``; left in eval mode).
    train_data, val_data
        Sequences of ``(image, labels)`` pairs (lists, ``load_folder_pairs``,
        ``pairs_from_arrays``, ``SyntheticDataset``...); ``val_data`` is optional.
    options
        The run's settings (default: :class:`FinetuneOptions`).
    checkpoint_path
        Output file of the final weights; the resumable train state is written beside it
        every ``checkpoint_every`` steps (see :mod:`~napari_sam.engine.training.state`).
    resume
        Continue the run whose train state is at ``checkpoint_path``.
    overwrite
        Allow replacing an existing output (replaced only when the run is complete).

    Yields
    ------
    FinetuneProgress
        A report before the first step (with validation IoU if ``val_data``), after
        every step, and ``done=True`` at the end. Stop early by closing the iterator;
        the model keeps the weights of the last step.

    Raises
    ------
    InputError
        Bad data or options, an existing output without ``resume`` / ``overwrite``
        (raised at once); while iterating, a train state that cannot be resumed, or a
        diverging run (non-finite loss or gradients: lower the learning rate).
    """
    options = options or FinetuneOptions()
    train_pairs = as_training_pairs(train_data, "training data")
    val_pairs = as_training_pairs(val_data, "validation data") if val_data is not None else None
    check_checkpoint_target(checkpoint_path, resume, overwrite)
    return _finetune(model, train_pairs, val_pairs, options, checkpoint_path, resume)


def run_finetune(
    model: torch.nn.Module,
    train_data: Sequence,
    val_data: Sequence | None = None,
    options: FinetuneOptions | None = None,
    checkpoint_path: PathLike | None = None,
    resume: bool = False,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
    overwrite: bool = False,
) -> list[FinetuneProgress]:
    """Run :func:`finetune` to the end; returns all progress reports.

    Parameters
    ----------
    model, train_data, val_data, options, checkpoint_path, resume, overwrite
        As for :func:`finetune`.
    on_progress
        Called with each report as it comes.

    Returns
    -------
    list of FinetuneProgress
        Every report, the last with ``done=True``.

    Raises
    ------
    InputError
        As for :func:`finetune`.
    """
    reports = []
    for report in finetune(model, train_data, val_data, options, checkpoint_path, resume, overwrite):
        reports.append(report)
        if on_progress is not None:
            on_progress(report)
    return reports


__all__ = [
    "MASK_LOSSES",
    "PROMPT_KINDS",
    "FinetuneOptions",
    "FinetuneProgress",
    "evaluate_prompted_iou",
    "evaluate_with_predictor",
    "finetune",
    "mask_losses",
    "run_finetune",
    "save_training_checkpoint",
    "training_state_path",
    "training_step_loss",
]
