"""Choosing the compute device and the numeric precision."""

from __future__ import annotations

import contextlib
import functools
import sys

import torch

from napari_sam.engine.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best available one: CUDA, then Apple MPS, then CPU.

    The model layer's chooser (used by ``load_model``) with its errors as ``InputError``.

    Parameters
    ----------
    device
        ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``, a ``torch.device``, or None
        for the best available.

    Returns
    -------
    torch.device
        The device to compute on.

    Raises
    ------
    InputError
        The requested device is unknown or not available here.
    """
    from napari_sam.model.device import resolve_device

    try:
        return resolve_device(device)
    except RuntimeError as err:
        raise InputError(f"{err} Pass device=None to use the best available device.") from err


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context for plain fp32 (``dtype`` None).

    Parameters
    ----------
    device
        Where the computation runs; its ``type`` selects the autocast backend.
    dtype
        The lower precision to compute in (from :func:`resolve_precision`), or None.

    Returns
    -------
    contextlib.AbstractContextManager
        A context to run the model in.
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX), where bf16 is fast."""
    if sys.platform != "linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto`` picks bf16 on CUDA GPUs that support it and on CPUs with native bf16,
    fp32 elsewhere (MPS included: its bf16 autocast is not reliably faster).

    Parameters
    ----------
    precision
        One of ``PRECISIONS``: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    device
        The device the model runs on.

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16`` or ``torch.float16`` for autocast, None for plain fp32.

    Raises
    ------
    InputError
        ``precision`` is unknown, or ``fp16`` was asked for on the CPU.
    """
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise InputError("fp16 is not supported on the CPU; use 'bf16' or 'fp32'.")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None
