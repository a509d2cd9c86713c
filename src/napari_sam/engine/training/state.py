"""The files of a fine-tuning run: the resumable train state and the final weights.

A run with ``checkpoint_path = model.pt`` writes

* ``model.train_state.pt`` every ``checkpoint_every`` steps and at the end: ONE file
  holding the weights, the optimizer state and the step, so weights and optimizer can
  never be of different steps (a kill between two writes cannot split them). It is
  what ``resume`` continues from; its weights also load with ``load_model``.
* ``model.pt`` once, when the run is complete: the weights in the official state-dict
  layout (they load anywhere SAM loads). An existing ``model.pt`` is replaced only
  then, and only with ``overwrite``; a run that stops early leaves it untouched.

Both are written beside their final name and renamed into place
(``save_atomically``), with the umask's file mode. Weights holding NaN or infinity
are never written: the run stops with advice instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.training.options import FinetuneOptions

PathLike = Union[str, os.PathLike]
TRAIN_STATE_FORMAT = "napari-sam train state 2"
# what a train state must hold, with the type of each entry
_STATE_ENTRIES = {"model": Mapping, "optimizer": Mapping, "step": int, "config_name": str}


def training_state_path(checkpoint_path: PathLike) -> Path:
    """Where the train state of a run lives: ``model.pt`` -> ``model.train_state.pt``.

    Parameters
    ----------
    checkpoint_path
        The run's output file (``~`` is not expanded here).

    Returns
    -------
    Path
        In the same folder: the output's stem plus ``.train_state.pt``.
    """
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".train_state.pt")


def check_checkpoint_target(checkpoint_path: PathLike | None, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run that would replace files it was not told to replace.

    Parameters
    ----------
    checkpoint_path
        The run's output (None: nothing is saved; then ``resume`` is an error).
    resume
        Continue the run saved at ``checkpoint_path``: its train state must exist.
    overwrite
        Allow replacing an existing output and train state.

    Raises
    ------
    InputError
        Both ``resume`` and ``overwrite``; ``resume`` without a train state; an existing
        output or train state without either flag; an output that is a folder.
    """
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: continue the saved run or replace it, not both.")
    if checkpoint_path is None:
        if resume:
            raise InputError("resume=True needs the checkpoint_path to resume from.")
        return
    path, state = Path(checkpoint_path).expanduser(), training_state_path(Path(checkpoint_path).expanduser())
    if path.is_dir():
        raise InputError(f"The output {path} is a folder; give the path of a checkpoint file (e.g. model.pt).")
    if resume:
        if not state.is_file():
            raise InputError(
                f"Cannot resume: there is no train state {state} (a run with this output writes one at every "
                f"checkpoint). To train the model at {path} further, start from it (--model) with a new output."
            )
        return
    if overwrite:
        return
    if state.exists():
        raise InputError(
            f"A run is saved at {state}{' (output ' + str(path) + ')' if path.exists() else ''}. Continue it with "
            f"resume=True (--resume), or start again with overwrite=True (--overwrite; an existing output stays "
            f"until the new run is complete), or choose another output."
        )
    if path.exists():
        raise InputError(
            f"{path} already exists. Replace it with overwrite=True (--overwrite; it stays until the new run is "
            f"complete) or choose another output. (resume=True / --resume needs the run's train state {state}, "
            f"which is not there.)"
        )


def divergence_error(step: int, options: FinetuneOptions, what: str) -> InputError:
    """The error that stops a run whose ``what`` (loss, gradients, weights) became NaN or infinite.

    Parameters
    ----------
    step
        The step (1-based) that diverged.
    options
        The run's settings: the advice names its learning rate and precision.
    what
        What became non-finite, e.g. ``"the loss"``.

    Returns
    -------
    InputError
        The error to raise, with advice on learning rate and precision.
    """
    advice = "" if options.precision == "fp32" else f" and train in fp32 (precision 'fp32', not {options.precision!r})"
    return InputError(
        f"Training diverged at step {step}: {what} became NaN or infinite. Lower the learning rate (it was "
        f"{options.learning_rate:g}; try {options.learning_rate / 10:g}){advice}; fp32 is the most stable precision. "
        f"Nothing non-finite was saved: the last train state and any existing output are unchanged."
    )


def _finite_cpu_weights(model, step: int, options: FinetuneOptions) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU; ``divergence_error`` if any tensor holds NaN or infinity."""
    from napari_sam.model.checkpoint import count_non_finite, cpu_state_dict

    weights = cpu_state_dict(model)
    bad = count_non_finite(weights)
    if bad:
        raise divergence_error(step, options, f"{bad} weight tensors")
    return weights


def save_training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, options: FinetuneOptions,
    checkpoint_path: PathLike,
) -> Path:
    """Write the train state of ``checkpoint_path``: weights, optimizer state and step in one file.

    Parameters
    ----------
    model, optimizer
        The model being trained and its optimizer.
    step
        Steps done.
    options
        The run's settings (stored for the record).
    checkpoint_path
        The run's output; the state goes to :func:`training_state_path` of it.

    Returns
    -------
    Path
        The train state file.

    Raises
    ------
    InputError
        Some weights are NaN or infinite (nothing is written).
    """
    from napari_sam.model.checkpoint import save_atomically

    state = {
        "format": TRAIN_STATE_FORMAT,
        "step": step,
        "model": _finite_cpu_weights(model, step, options),
        "optimizer": optimizer.state_dict(),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "config_name": model.config.name,
    }
    return save_atomically(state, training_state_path(Path(checkpoint_path).expanduser()))


def save_final_weights(model: torch.nn.Module, step: int, options: FinetuneOptions, checkpoint_path: PathLike) -> Path:
    """Write the finished model's weights to ``checkpoint_path`` (official layout), replacing it when complete.

    Parameters
    ----------
    model
        The trained model.
    step, options
        The run's step and settings (for the advice if the weights are not finite).
    checkpoint_path
        The output file.

    Returns
    -------
    Path
        Where the weights were written.

    Raises
    ------
    InputError
        Some weights are NaN or infinite (nothing is written).
    """
    from napari_sam.model.checkpoint import save_atomically

    return save_atomically(_finite_cpu_weights(model, step, options), checkpoint_path)


def save_training_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, options: FinetuneOptions, path: PathLike
) -> Path:
    """Write the train state, then the weights at ``path`` (the end of a run); returns ``path``.

    The weights go last: a kill between the two writes leaves a train state of the
    last step and the old output, and resuming then writes the output.

    Parameters
    ----------
    model, optimizer
        The trained model and its optimizer.
    step
        Steps done.
    options
        The run's settings.
    path
        The run's output file; the train state goes beside it
        (:func:`training_state_path`).

    Returns
    -------
    Path
        Where the weights were written.

    Raises
    ------
    InputError
        Some weights are NaN or infinite (nothing is written).
    """
    save_training_state(model, optimizer, step, options, path)
    return save_final_weights(model, step, options, path)


def _cannot_resume(state_path: Path, reason: str) -> InputError:
    return InputError(
        f"Cannot resume from {state_path}: {reason} Or start a new run with overwrite (--overwrite)."
    )


def read_training_state(checkpoint_path: PathLike) -> dict[str, Any]:
    """The train state of ``checkpoint_path``, checked to be one this module wrote.

    Parameters
    ----------
    checkpoint_path
        The run's output; the state is read from :func:`training_state_path` of it.

    Returns
    -------
    dict
        ``model`` (weights, CPU), ``optimizer`` (state dict), ``step``, ``config_name``, ``options``.

    Raises
    ------
    InputError
        The file is missing, unreadable, corrupt, or not a napari-sam train state.
    """
    from napari_sam.model.checkpoint import read_checkpoint_file
    from napari_sam.model.errors import CheckpointError

    state_path = training_state_path(Path(checkpoint_path).expanduser())
    try:
        state = read_checkpoint_file(state_path)
    except CheckpointError as error:
        raise _cannot_resume(state_path, str(error)) from error
    wrong = [name for name, kind in _STATE_ENTRIES.items() if not isinstance(state, Mapping)
             or not isinstance(state.get(name), kind)]
    if wrong:
        raise _cannot_resume(state_path, f"it is not a train state written by napari-sam's fine-tuning "
                                         f"(missing or invalid: {', '.join(wrong)}).")
    return dict(state)


def _check_same_model(state: Mapping[str, Any], model, state_path: Path) -> None:
    """The saved weights fit ``model``'s architecture exactly."""
    from napari_sam.model.checkpoint import check_config
    from napari_sam.model.errors import ArchitectureMismatchError

    if state["config_name"] != model.config.name:
        raise _cannot_resume(
            state_path, f"it is a run of a {state['config_name']!r} model, but the model given is "
            f"{model.config.name!r}. Resume with the model the run started from (same --model / --config)."
        )
    try:
        check_config(state["model"], model.config, source=str(state_path))
    except ArchitectureMismatchError as error:
        raise _cannot_resume(state_path, str(error)) from error


def load_training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint_path: PathLike, options: FinetuneOptions,
    device: torch.device | str,
) -> int:
    """Restore weights and optimizer state from the train state of ``checkpoint_path``; returns the step reached.

    Parameters
    ----------
    model, optimizer
        The model and the optimizer over its trainable parameters (built for ``options``).
    checkpoint_path
        The run's output.
    options
        The resumed run's settings (``freeze_image_encoder`` must match the saved run's).
    device
        Where the model trains.

    Returns
    -------
    int
        The number of steps the saved run had done.

    Raises
    ------
    InputError
        Unreadable or foreign state, another architecture, or other trainable parameters.
    """
    state_path = training_state_path(Path(checkpoint_path).expanduser())
    state = read_training_state(checkpoint_path)
    _check_same_model(state, model, state_path)
    model.load_state_dict(state["model"])
    model.to(device)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        saved = state.get("options", {}).get("freeze_image_encoder")
        raise _cannot_resume(
            state_path, f"its optimizer state does not fit the parameters trained now ({error}). The saved run had "
            f"freeze_image_encoder={saved}, this one {options.freeze_image_encoder}: resume with the same setting."
        ) from error
    return int(state["step"])


__all__ = [
    "TRAIN_STATE_FORMAT",
    "check_checkpoint_target",
    "divergence_error",
    "load_training_state",
    "read_training_state",
    "save_final_weights",
    "save_training_checkpoint",
    "save_training_state",
    "training_state_path",
]
