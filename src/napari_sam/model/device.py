"""Choosing the torch device a model runs on (the engine's ``select_device`` wraps this)."""

from __future__ import annotations

import torch

from napari_sam.model.errors import DeviceError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; None picks CUDA, then Apple MPS, then CPU.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device``, or None for the
        best one available.

    Returns
    -------
    torch.device
        A device this PyTorch build can use.

    Raises
    ------
    DeviceError
        ``device`` is not a device name, names CUDA / MPS where there is none, or a GPU index
        beyond the GPUs present.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"Device {device} was requested but this PyTorch build has no usable CUDA device; "
            "choose 'cpu' or leave the device unset to use the best one available."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"Device {device} was requested but this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); choose one of them or leave the device unset."
        )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(
            f"Device {device} was requested but Apple MPS is not available here; "
            "choose 'cpu' or leave the device unset to use the best one available."
        )
    return device
