"""Loading and saving SAM weights: safe unpickling, container unwrapping, architecture detection.

A checkpoint is untrusted input (a pickle can run code), so files are only ever read
with ``torch.load(..., weights_only=True)``: a file holding pickled code or objects is
refused with :class:`UnsafeCheckpointError` before anything in it runs.

The architecture is identified from the tensors alone: every config in ``ALL_CONFIGS`` (SAM and SAM 2) is
built on the meta device (no memory, no initialisation) and its state-dict keys and
shapes are compared with the file's. Loading then fills a meta-built model with the
file's tensors (``assign=True``), so a 2.5 GB ViT-H is never randomly initialised first.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from napari_sam.model.config import ALL_CONFIGS, Sam2Config, SamConfig
from napari_sam.model.decoders.instance import (
    DECODER_PREFIX,
    decoder_config_from_state_dict,
    split_decoder_state,
)
from napari_sam.model.device import resolve_device
from napari_sam.model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:
    from napari_sam.model.sam.model import Sam

PathLike = Union[str, os.PathLike]
StateDict = dict[str, torch.Tensor]

# Key under which micro-sam's combined checkpoints keep the instance decoder ({"model_state": sam, "decoder_state": d}).
_DECODER_STATE_KEY = "decoder_state"
# Keys under which training code commonly nests the weights ({"model": sd}, torch_em's {"model_state": sd}, ...).
_CONTAINER_KEYS = ("model", "model_state", "model_state_dict", "state_dict", "sam")
# Key prefixes added by wrappers: DistributedDataParallel ("module."), micro-sam / torch_em training ("sam."),
# PyTorch Lightning modules holding the network as ``self.model`` ("model."). No official key starts with these.
_WRAPPER_PREFIXES = ("module.", "sam.", "model.")
# State-dict entries a checkpoint may lack without changing the model (BatchNorm's step counter in TinyViT).
_OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)
# How many keys an error message lists per category before summarising the rest.
_MAX_LISTED_KEYS = 8


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


def sha256sum(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in chunks (checkpoints are GBs).

    Parameters
    ----------
    path
        The file to hash.
    chunk_size
        Bytes read at a time.

    Returns
    -------
    str
        The 64-character lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_config(config: SamConfig | Sam2Config | str | None) -> SamConfig | Sam2Config | None:
    if config is None or isinstance(config, (SamConfig, Sam2Config)):
        return config
    try:
        return ALL_CONFIGS[config]
    except KeyError:
        raise CheckpointError(f"Unknown config {config!r}; known configs: {', '.join(ALL_CONFIGS)}.") from None


def build_model(config: SamConfig | Sam2Config) -> torch.nn.Module:
    """A randomly initialised model of ``config``'s family (SAM or SAM 2), on the current default device.

    Parameters
    ----------
    config
        A SAM or SAM 2 config.

    Returns
    -------
    torch.nn.Module
        ``Sam`` or ``Sam2``, in eval mode.
    """
    if isinstance(config, Sam2Config):
        from napari_sam.model.sam2.model import build_sam2

        return build_sam2(config)
    from napari_sam.model.sam.model import build_sam

    return build_sam(config)


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return f"{shown}, ... (+{more} more)" if more > 0 else shown


# ----------------------------------------------------------------------------------------------------------------
# Reading a file into a plain state dict


def _refused_global(error: Exception) -> str | None:
    """The Python object a weights-only refusal names (``GLOBAL posix.system`` -> ``'posix.system'``), if any.

    Only such a reference means the file holds pickled code or objects; any other
    refusal (an unknown instruction, a protocol byte out of range) means the bytes are
    not a valid pickle at all: a corrupt file or no checkpoint.
    """
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def _file_kind(path: Path) -> str:
    """``"zip"`` (torch.save since PyTorch 1.6), ``"pickle"`` (legacy torch.save, a bare pickle) or ``"other"``."""
    with open(path, "rb") as handle:
        header = handle.read(4)
    if not header:
        raise CheckpointError(f"{path} is empty: not a checkpoint (an interrupted download or copy?).")
    if header.startswith(b"PK\x03\x04"):
        return "zip"
    # a pickle starts with PROTO (0x80) and a protocol number 2..5 (torch writes 2)
    if len(header) > 1 and header[0] == 0x80 and 2 <= header[1] <= pickle.HIGHEST_PROTOCOL:
        return "pickle"
    return "other"


def read_checkpoint_file(path: PathLike) -> Any:
    """``torch.load`` the file at ``path`` safely (tensors and plain containers only), on the CPU.

    Every failure becomes a :class:`CheckpointError` saying why: missing
    (:class:`CheckpointNotFoundError`), pickled code or objects
    (:class:`UnsafeCheckpointError`, refused before anything in it runs), empty,
    truncated or corrupted, or not a PyTorch checkpoint at all.

    Parameters
    ----------
    path
        The file to read.

    Returns
    -------
    Any
        What the file holds: a state dict, a dict of them, a tensor...

    Raises
    ------
    CheckpointNotFoundError
        There is no file at ``path``.
    UnsafeCheckpointError
        The file holds pickled code or objects (refused before anything in it runs).
    CheckpointError
        ``path`` is a folder, or the file is empty, truncated, corrupted or not a PyTorch checkpoint.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"No checkpoint file at {path}.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file (a checkpoint is one .pth/.pt file).")
    kind = _file_kind(path)
    if kind == "other":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unrecognised file format).")
    try:
        with warnings.catch_warnings():
            # torch's "protocol N is not the default" note asks users to file issues; failures are reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if refused is None:
            raise CheckpointError(
                f"Could not read {path}: it is corrupt or not a PyTorch checkpoint (its data is not a valid "
                f"pickle). If it was downloaded or copied, do that again."
            ) from error
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it is not a plain weights file. It contains a reference to the Python object "
            f"{refused!r}, i.e. pickled code or Python objects, which could run code when loaded, so it was not "
            f"executed. Only files holding tensors (a state dict, possibly inside a dict) can be loaded. If you "
            f"trust its source, re-save only the weights in the program that made it: "
            f"torch.save(model.state_dict(), 'weights.pth')."
        ) from error
    except Exception as error:  # zip reader errors (RuntimeError), EOFError, ...
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        what = "a truncated or corrupted PyTorch checkpoint" if kind == "zip" else "not a PyTorch checkpoint"
        raise CheckpointError(
            f"Could not read {path}: it looks like {what} ({detail}). If it was downloaded, download it again."
        ) from error


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """The flat ``{official key: tensor}`` dict inside a loaded checkpoint object.

    Descends through common containers (``{"model": sd}``, ``{"model_state": sd}``,
    ``{"state_dict": sd}``, ...), drops non-tensor entries (epochs, optimiser settings at
    the same level), and strips wrapper prefixes (``module.``, ``sam.``, ``model.``) from keys.

    Parameters
    ----------
    obj
        What :func:`read_checkpoint_file` returned.
    source
        How error messages name the checkpoint (e.g. its path).

    Returns
    -------
    dict of str to torch.Tensor
        The tensors under their official keys.

    Raises
    ------
    CheckpointError
        ``obj`` is not a mapping (after descending through containers) or holds no tensors.
    """
    for _ in range(len(_CONTAINER_KEYS) + 1):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(value, torch.Tensor) for value in obj.values()):
            break
        nested = next((obj[key] for key in _CONTAINER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a dict of tensors (a state dict).")
    tensors = {
        _strip_wrapper_prefixes(str(key)): value for key, value in obj.items() if isinstance(value, torch.Tensor)
    }
    if not tensors:
        top_keys = _list_keys([str(key) for key in obj]) or "none"
        raise CheckpointError(f"{source} holds no tensors (top-level keys: {top_keys}).")
    return tensors


def read_state_dict(path: PathLike) -> StateDict:
    """Load the file at ``path`` safely and return its state dict with official SAM keys.

    Raises :class:`CheckpointNotFoundError` (missing file), :class:`UnsafeCheckpointError`
    (pickled code or objects) or :class:`CheckpointError` (not a checkpoint, corrupted).

    Parameters
    ----------
    path
        The checkpoint file.

    Returns
    -------
    dict of str to torch.Tensor
        The file's tensors, on the CPU, under official keys (see :func:`unwrap_state_dict`).
    """
    path = Path(path).expanduser()
    obj = read_checkpoint_file(path)
    state = unwrap_state_dict(obj, source=str(path))
    if isinstance(obj, Mapping) and isinstance(obj.get(_DECODER_STATE_KEY), Mapping):
        # micro-sam's combined form: the decoder beside the SAM weights, under our prefix from here on
        decoder = unwrap_state_dict(obj[_DECODER_STATE_KEY], source=f"{path} (decoder_state)")
        state.update({DECODER_PREFIX + key: value for key, value in decoder.items()})
    return state


def read_decoder_state_dict(path: PathLike) -> StateDict:
    """Load an instance decoder's state dict safely: micro-sam's ``vit_*_decoder.pt`` or a combined checkpoint.

    Accepts a plain decoder state dict (micro-sam's published decoder files: an ``OrderedDict`` of
    tensors), micro-sam's combined ``{"model_state": ..., "decoder_state": ...}`` (the decoder part is
    taken), or one of our own checkpoints with ``instance_decoder.`` keys (those keys are taken).

    Parameters
    ----------
    path
        The decoder file.

    Returns
    -------
    dict of str to torch.Tensor
        The decoder's tensors, keys without any prefix (as ``InstanceDecoder.state_dict()`` names them).

    Raises
    ------
    CheckpointError
        Missing, unsafe (:class:`UnsafeCheckpointError`), unreadable, or holding no decoder tensors.
    """
    path = Path(path).expanduser()
    obj = read_checkpoint_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get(_DECODER_STATE_KEY), Mapping):
        obj = obj[_DECODER_STATE_KEY]
    state = unwrap_state_dict(obj, source=str(path))
    prefixed = {key[len(DECODER_PREFIX) :]: value for key, value in state.items() if key.startswith(DECODER_PREFIX)}
    state = prefixed or state
    if "out_conv.weight" not in state or "base.block.1.weight" not in state:
        raise CheckpointError(
            f"{path} is not an instance decoder (no out_conv / base tensors; keys: {_list_keys(sorted(state))}). "
            f"Pass micro-sam's vit_*_decoder.pt, or a checkpoint that holds a decoder."
        )
    return state


def _file_decoder_config(state_dict: Mapping[str, torch.Tensor], source: str) -> Any:
    """The instance decoder config the file's ``instance_decoder.*`` tensors describe, or None without them."""
    _, decoder = split_decoder_state(state_dict, DECODER_PREFIX)
    if not decoder:
        return None
    try:
        return decoder_config_from_state_dict(decoder)
    except KeyError as error:
        raise ArchitectureMismatchError(
            f"{source} holds instance decoder tensors ({DECODER_PREFIX}*) without the decoder's layout: "
            f"{error.args[0]!r} is missing."
        ) from None


def _without_decoder(config: SamConfig | Sam2Config) -> SamConfig | Sam2Config:
    """``config``'s SAM part alone (the config itself when it has no instance decoder)."""
    if isinstance(config, SamConfig) and config.instance_decoder is not None:
        return replace(config, instance_decoder=None)
    return config


def _fit_decoder(config: SamConfig | Sam2Config, decoder_config: Any) -> SamConfig | Sam2Config:
    """``config`` with the instance decoder the file holds (unchanged when the file holds none).

    The decoder's sizes come from the file, so a checkpoint with a decoder loads under any SAM config
    whose SAM part fits (micro-sam's fine-tunes are vit_b etc. plus a decoder). A file without decoder
    tensors must fit the config as it is (a config with a decoder then reports them missing).
    """
    if decoder_config is None or not isinstance(config, SamConfig) or config.instance_decoder == decoder_config:
        return config
    return replace(config, instance_decoder=decoder_config)


# ----------------------------------------------------------------------------------------------------------------
# Architecture detection


@functools.lru_cache(maxsize=None)
def expected_shapes(config: SamConfig | Sam2Config) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of the model built from ``config`` (built on the meta device: instant).

    Cached per config (configs are frozen dataclasses, hence hashable).

    Parameters
    ----------
    config
        The architecture.

    Returns
    -------
    dict of str to tuple of int
        The shape of every state-dict entry, persistent buffers included.
    """
    with torch.device("meta"):
        model = build_model(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@dataclass(frozen=True)
class StateDictDiff:
    """How a state dict differs from what a config expects."""

    config_name: str
    matching: int
    expected: int
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, file shape, expected shape)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """Readable summary, each category truncated to a few keys."""
        parts = [f"{self.matching} of {self.expected} expected tensors match {self.config_name!r}"]
        if self.missing:
            parts.append(f"missing from the file ({len(self.missing)}): {_list_keys(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in the file ({len(self.unexpected)}): {_list_keys(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{key} {tuple(got)} vs expected {tuple(want)}" for key, got, want in self.mismatched]
            parts.append(f"shape mismatches ({len(shapes)}): {_list_keys(shapes)}")
        return "; ".join(parts)


def compare_state_dict(state_dict: Mapping[str, torch.Tensor], config: SamConfig | Sam2Config) -> StateDictDiff:
    """Compare keys and shapes of ``state_dict`` with the model built from ``config``.

    Parameters
    ----------
    state_dict
        Tensors under official keys (as :func:`unwrap_state_dict` returns them).
    config
        The architecture to compare with.

    Returns
    -------
    StateDictDiff
        Matching, missing (optional ``num_batches_tracked`` entries do not count),
        unexpected and shape-mismatched keys.
    """
    expected = expected_shapes(config)
    got = {key: tuple(value.shape) for key, value in state_dict.items()}
    missing = sorted(
        key for key in expected if key not in got and not key.endswith(_OPTIONAL_KEY_SUFFIXES)
    )
    unexpected = sorted(key for key in got if key not in expected)
    mismatched = sorted((key, got[key], expected[key]) for key in expected if key in got and got[key] != expected[key])
    matching = sum(1 for key in expected if got.get(key) == expected[key])
    return StateDictDiff(config.name, matching, len(expected), missing, unexpected, mismatched)


def detect_config(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> SamConfig | Sam2Config:
    """The config in ``ALL_CONFIGS`` whose keys and shapes exactly match ``state_dict``.

    Raises :class:`ArchitectureMismatchError` naming the closest config and what differs,
    or (if several match exactly) asking for an explicit config.

    Parameters
    ----------
    state_dict
        Tensors under official keys.
    source
        How error messages name the checkpoint.

    Returns
    -------
    SamConfig
        The only config of ``ALL_CONFIGS`` that fits exactly.

    Raises
    ------
    ArchitectureMismatchError
        No config fits exactly, or several do.
    """
    # Compare with the file's own family first (SAM 2 names its heads sam_*): building every
    # architecture on the meta device costs seconds, so the others are built only for the error message.
    family = Sam2Config if any(key.startswith("sam_mask_decoder.") for key in state_dict) else SamConfig
    decoder_config = _file_decoder_config(state_dict, source)
    sam_part = split_decoder_state(state_dict, DECODER_PREFIX)[0] if decoder_config is not None else state_dict
    # The SAM part picks the architecture, the decoder (sized from the file) is checked on those only:
    # building every large architecture once more with a decoder attached would cost seconds per load.
    candidates = [
        (config, _fit_decoder(config, decoder_config))
        for config in ALL_CONFIGS.values()
        if isinstance(config, family) and compare_state_dict(sam_part, _without_decoder(config)).exact
    ]
    exact = [fitted for _, fitted in candidates if compare_state_dict(state_dict, fitted).exact]
    if len(exact) > 1:
        # a config that has this very decoder of its own wins over one that only shares the SAM part
        own = [fitted for config, fitted in candidates if fitted in exact and config == fitted]
        exact = own if len(own) == 1 else exact
    if not exact:
        # the SAM part fits but the decoder does not: say what differs there; else compare with everything
        diffs = [(compare_state_dict(state_dict, fitted), fitted) for _, fitted in candidates] or [
            (compare_state_dict(state_dict, config), config) for config in ALL_CONFIGS.values()
        ]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        names = ", ".join(config.name for config in exact)
        raise ArchitectureMismatchError(
            f"{source} fits several architectures ({names}); pass config= to choose one."
        )
    closest, _ = max(diffs, key=lambda item: (item[0].matching, -len(item[0].missing) - len(item[0].unexpected)))
    raise ArchitectureMismatchError(
        f"{source} does not match any known SAM architecture ({', '.join(ALL_CONFIGS)}). Closest is "
        f"{closest.config_name!r}: {closest.describe()}. If it is a SAM variant with another layout, pass config= "
        f"with a matching SamConfig."
    )


def check_config(
    state_dict: Mapping[str, torch.Tensor], config: SamConfig | Sam2Config, source: str = "checkpoint"
) -> None:
    """Raise :class:`ArchitectureMismatchError` unless ``state_dict`` exactly fits ``config``.

    Parameters
    ----------
    state_dict
        Tensors under official keys.
    config
        The architecture they must fit.
    source
        How the error message names the checkpoint.

    Raises
    ------
    ArchitectureMismatchError
        Keys or shapes differ; the message says how, and names another config of
        ``ALL_CONFIGS`` that fits exactly, if one does.
    """
    diff = compare_state_dict(state_dict, config)
    if diff.exact:
        return
    other = [name for name, other_config in ALL_CONFIGS.items() if compare_state_dict(state_dict, other_config).exact]
    hint = f" It matches {other[0]!r} instead." if other else ""
    raise ArchitectureMismatchError(f"{source} does not fit config {config.name!r}: {diff.describe()}.{hint}")


# ----------------------------------------------------------------------------------------------------------------
# Building the model


def _fill_meta_leftovers(model: torch.nn.Module, config: SamConfig | Sam2Config) -> bool:
    """Give real values to buffers still on the meta device after loading; False if one cannot be derived.

    Only non-persistent buffers can be left over (the file held every persistent entry);
    the pixel normalisation constants come from the config.
    """
    derivable = {
        "pixel_mean": lambda: torch.tensor(config.pixel_mean, dtype=torch.float32).view(3, 1, 1),
        "pixel_std": lambda: torch.tensor(config.pixel_std, dtype=torch.float32).view(3, 1, 1),
    }
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        if name not in derivable:
            return False
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, attribute, derivable[name]())
    return not any(tensor.is_meta for tensor in list(model.parameters()) + list(model.buffers()))


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: SamConfig | Sam2Config) -> Sam:
    """A :class:`Sam` for ``config`` holding the tensors of ``state_dict`` (float32, on CPU, eval mode).

    The caller has checked that keys and shapes fit (:func:`check_config`).

    Parameters
    ----------
    state_dict
        Tensors under official keys; floating-point ones are converted to float32.
    config
        The architecture to build.

    Returns
    -------
    Sam
        The model, in eval mode, on the CPU. It is built on the meta device and filled
        with the tensors, so it is not randomly initialised first (unless a buffer left on
        the meta device cannot be derived from ``config``: then it is built normally and loaded).
    """
    # Floating tensors become float32 (fp16/bf16 files exist); index tensors keep their dtype.
    tensors = {
        key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()
    }
    with torch.device("meta"):
        model = build_model(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    if not _fill_meta_leftovers(model, config):
        # A buffer we cannot derive stayed on meta: take the slow, always-correct path.
        model = build_model(config)
        model.load_state_dict(tensors, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def count_non_finite(tensors: Mapping[str, torch.Tensor]) -> int:
    """How many floating-point tensors of ``tensors`` hold a NaN or an infinite value.

    Parameters
    ----------
    tensors
        A state dict; integer tensors are not counted.

    Returns
    -------
    int
        The number of floating-point tensors with at least one non-finite value.
    """
    return sum(
        1 for value in tensors.values() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    )


def _warn_if_non_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Warn (not refuse: the file may be inspected on purpose) when weights hold NaN or infinity."""
    bad = count_non_finite(state_dict)
    if bad:
        total = sum(1 for value in state_dict.values() if value.is_floating_point())
        warnings.warn(
            f"{source}: {bad} of {total} tensors hold NaN or infinite values; the model will predict NaN or "
            f"nothing. The checkpoint is probably from a training run that diverged: use an earlier checkpoint.",
            RuntimeWarning,
            stacklevel=3,
        )


def _checkpoint_file(name_or_path: PathLike) -> Path:
    """The existing file ``name_or_path`` names (not a zoo name); a clear error when there is none."""
    from napari_sam.model import zoo

    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if str(name_or_path) in zoo.REGISTRY:
        # a Path always means a file (documented): say how to ask for the zoo model instead
        raise CheckpointNotFoundError(
            f"No checkpoint file at {path}. To use the zoo model {str(name_or_path)!r}, pass its name as a string: "
            f"load_model({str(name_or_path)!r})."
        )
    raise CheckpointNotFoundError(
        f"{str(name_or_path)!r} is neither an existing checkpoint file nor a zoo model name "
        f"(known names: {', '.join(zoo.list_models())})."
    )


def load_model(
    name_or_path: PathLike,
    device: str | torch.device | None = None,
    *,
    config: SamConfig | Sam2Config | str | None = None,
    progress: bool | Any = True,
    preprocessing: str | None = None,
    decoder: PathLike | None = None,
) -> Sam:
    """A ready :class:`Sam` (eval mode, on ``device``) from a zoo name or a checkpoint file.

    Parameters
    ----------
    name_or_path
        A name from :func:`napari_sam.model.zoo.list_models` (fetched into the cache and
        sha256-checked on first use) or the path of a checkpoint file. A ``str`` that is a
        zoo name is taken as the name; a ``Path`` is always a file (a missing
        ``Path("vit_b")`` is an error that says to pass the string ``"vit_b"`` for the zoo model).
    device
        ``"cuda"``, ``"mps"``, ``"cpu"``, a ``torch.device``, or None for the best available.
    config
        Force an architecture (a ``SamConfig``, a ``Sam2Config`` or a name in ``ALL_CONFIGS``) instead of
        detecting it from the tensors; the file must still fit it exactly.
    progress
        Download progress bar, see :func:`napari_sam.model.zoo.fetch_checkpoint`.
    preprocessing
        How the model expects its input image (``"sam"`` or ``"medsam"``, see
        :mod:`napari_sam.model.zoo`); default: the zoo entry's, or ``"sam"`` for a file.
        Stored as ``model.preprocessing`` for the engine.
    decoder
        An instance segmentation decoder file to attach (micro-sam's ``vit_*_decoder.pt``, a combined
        micro-sam checkpoint, or one of ours holding a decoder); it replaces a decoder the checkpoint
        itself holds. Default: the checkpoint's own decoder (``instance_decoder.*`` tensors or micro-sam's
        ``decoder_state``), or the zoo entry's published decoder; none if there is none.

    Returns
    -------
    Sam
        The model with the file's weights (float32), in eval mode, on ``device``; ``model.instance_decoder``
        is the attached decoder or None.

    Warns
    -----
    RuntimeWarning
        Some tensors hold NaN or infinite values (e.g. a diverged training run).

    Raises
    ------
    CheckpointNotFoundError
        Neither a zoo name nor an existing file.
    UnsafeCheckpointError
        The file holds pickled code/objects (refused, not executed).
    ArchitectureMismatchError
        The tensors fit no known (or not the requested) architecture.
    CheckpointError
        The file is not a readable checkpoint, or ``config`` names no config in ``ALL_CONFIGS``.
    DownloadError
        A zoo checkpoint could not be downloaded or failed its sha256 check.
    DeviceError
        ``device`` is not a device name, or names CUDA / MPS where there is none.
    ValueError
        ``preprocessing`` is not one of ``zoo.PREPROCESSINGS``.
    """
    from napari_sam.model import zoo

    target_device = resolve_device(device)
    forced = _resolve_config(config)
    if preprocessing is not None and preprocessing not in zoo.PREPROCESSINGS:
        raise ValueError(f"Unknown preprocessing {preprocessing!r}; choose one of {', '.join(zoo.PREPROCESSINGS)}.")
    if isinstance(name_or_path, str) and name_or_path in zoo.REGISTRY:
        entry = zoo.get_entry(name_or_path)
        preprocessing = preprocessing or entry.preprocessing
        path = zoo.fetch_checkpoint(name_or_path, progress=progress)
        if decoder is None and entry.decoder_url:
            decoder = zoo.fetch_decoder(name_or_path, progress=progress)
        expected = forced or ALL_CONFIGS[entry.config_name]
        source = f"zoo model {entry.name!r} ({path})"
    else:
        path = _checkpoint_file(name_or_path)
        expected = forced
        source = str(path)
    state_dict = read_state_dict(path)
    if decoder is not None:
        decoder_state = read_decoder_state_dict(decoder)
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(DECODER_PREFIX)}
        state_dict.update({DECODER_PREFIX + key: value for key, value in decoder_state.items()})
        source = f"{source} with decoder {Path(decoder).expanduser()}"
    if expected is None:
        expected = detect_config(state_dict, source=source)
    else:
        expected = _fit_decoder(expected, _file_decoder_config(state_dict, source))
        check_config(state_dict, expected, source=source)
    _warn_if_non_finite(state_dict, source)
    model = build_from_state_dict(state_dict, expected)
    # a SAM 2 model brings its own input transform ("sam2"); SAM's default is "sam"
    model.preprocessing = preprocessing or getattr(model, "preprocessing", None) or zoo.PREPROCESS_SAM
    return model.to(target_device).eval()


def _current_umask() -> int:
    """The process umask (read without changing it where the OS allows: Linux's /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only portable way to read it is to set it
    os.umask(mask)
    return mask


def save_atomically(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is never a partial file.

    The data goes to a temporary file beside ``path`` (same folder, so the rename
    cannot cross file systems), is flushed to disk, gets the mode a new file would get
    (``0o666`` minus the umask; ``mkstemp`` alone would leave ``0o600``), and only
    then replaces ``path``. On any failure the temporary file is removed and an
    existing ``path`` is untouched.

    Parameters
    ----------
    obj
        What to save (tensors and plain containers, so it loads with ``weights_only=True``).
    path
        The final file; its folder is created if missing.

    Returns
    -------
    Path
        ``path``, expanded.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def cpu_state_dict(model: torch.nn.Module) -> StateDict:
    """``model``'s state dict as detached, contiguous CPU tensors (official key layout).

    Parameters
    ----------
    model
        The model (on any device).

    Returns
    -------
    dict of str to torch.Tensor
        Copies on the CPU (tensors already on the CPU and contiguous are shared, not copied).
    """
    return {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}


def save_checkpoint(model: torch.nn.Module, path: PathLike) -> Path:
    """Write ``model``'s weights as a plain state dict (official key layout, CPU tensors).

    The file loads with ``torch.load(weights_only=True)`` here and in the official
    segment-anything code. An instance decoder (``model.instance_decoder``) is saved with it under
    ``instance_decoder.*`` keys, and :func:`load_model` attaches it again. It is written with :func:`save_atomically`, so an
    interrupted save never leaves a truncated checkpoint under ``path``.

    Parameters
    ----------
    model
        The model whose weights to save.
    path
        The ``.pt`` / ``.pth`` file to write (replaced if it exists).

    Returns
    -------
    Path
        ``path``, expanded.

    Raises
    ------
    CheckpointError
        Some weights are NaN or infinite (nothing is written: such a file would replace a
        usable checkpoint with one that predicts nothing).
    """
    state = cpu_state_dict(model)
    bad = count_non_finite(state)
    if bad:
        raise CheckpointError(
            f"Not saving {path}: {bad} weight tensors hold NaN or infinite values (a diverged training run?)."
        )
    return save_atomically(state, path)
