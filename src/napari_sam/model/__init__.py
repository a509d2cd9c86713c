"""SAM networks, checkpoint loading and the model zoo (no napari, no engine imports).

Heavy submodules (torch) are imported lazily: ``from napari_sam.model import load_model``
only imports torch when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from napari_sam.model.config import (
    CONFIGS,
    SAM2_CONFIGS,
    HieraEncoderConfig,
    InstanceDecoderConfig,
    Sam2Config,
    SamConfig,
    TinyViTEncoderConfig,
    ViTEncoderConfig,
)

if TYPE_CHECKING:
    import torch

    from napari_sam.model.decoders.instance import InstanceDecoder
    from napari_sam.model.sam.model import Sam
    from napari_sam.model.sam2.model import Sam2

__all__ = [
    "CONFIGS",
    "SAM2_CONFIGS",
    "HieraEncoderConfig",
    "InstanceDecoder",
    "InstanceDecoderConfig",
    "Sam2Config",
    "SamConfig",
    "TinyViTEncoderConfig",
    "ViTEncoderConfig",
    "build_sam",
    "build_sam2",
    "load_model",
]


def build_sam(config: SamConfig | str) -> Sam:
    """Build a randomly initialised SAM model (``torch.nn.Module``) from a config or config name.

    Parameters
    ----------
    config
        A :class:`SamConfig`, or the name of one in ``CONFIGS`` (e.g. ``"vit_b"``).

    Returns
    -------
    Sam
        The model in eval mode, on the current default torch device.

    Raises
    ------
    KeyError
        ``config`` is a name that is not in ``CONFIGS``.
    """
    from napari_sam.model.sam.model import build_sam as _build

    return _build(config)


def build_sam2(config: Sam2Config | str) -> Sam2:
    """Build a randomly initialised SAM 2.1 model (``torch.nn.Module``) from a config or config name.

    Parameters
    ----------
    config
        A :class:`Sam2Config`, or the name of one in ``SAM2_CONFIGS`` (e.g. ``"sam2.1_hiera_tiny"``).

    Returns
    -------
    Sam2
        The model in eval mode, on the current default torch device.

    Raises
    ------
    KeyError
        ``config`` is a name that is not in ``SAM2_CONFIGS``.
    """
    from napari_sam.model.sam2.model import build_sam2 as _build

    return _build(config)


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = None, **kwargs: Any) -> Sam | Sam2:
    """Load a SAM or SAM 2 model from a zoo name or a local checkpoint file (eval mode, on ``device``).

    Keyword arguments (``config=``, ``progress=``) go to :func:`napari_sam.model.checkpoint.load_model`.

    Parameters
    ----------
    name_or_path
        A zoo model name (a ``str``) or the path of a checkpoint file.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device``, or None for the
        best one available.
    **kwargs
        ``config``, ``progress``, ``preprocessing``, ``decoder`` (an instance decoder file to attach): see
        :func:`napari_sam.model.checkpoint.load_model`.

    Returns
    -------
    Sam or Sam2
        The model with the checkpoint's weights, in eval mode, on ``device`` (the architecture
        is recognised from the tensors' names and shapes).

    Raises
    ------
    CheckpointError
        The file is missing, unsafe, unreadable or of an unknown architecture (see
        :func:`napari_sam.model.checkpoint.load_model` for the subclasses).
    DownloadError
        A zoo checkpoint could not be downloaded or failed its sha256 check.
    DeviceError
        ``device`` does not exist here.
    ValueError
        An unknown ``preprocessing`` name.
    """
    from napari_sam.model.checkpoint import load_model as _load

    return _load(name_or_path, device=device, **kwargs)


def __getattr__(name: str) -> Any:
    # torch-heavy classes are imported on first use, so importing napari_sam.model stays cheap
    if name == "InstanceDecoder":
        from napari_sam.model.decoders.instance import InstanceDecoder

        return InstanceDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
