"""Choosing the compute device and the numeric precision."""

from __future__ import annotations

import contextlib
import functools
import sys

import torch

from napari_sam.engine.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autocast precisions (also what training accepts)
# what a Predictor accepts: the autocast ones plus int8, linear layers quantised on the CPU (quantize_int8)
PREDICTOR_PRECISIONS = (*PRECISIONS, "int8")


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


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of ``model`` whose linear layers run in int8 (dynamic quantisation); ``model`` is not changed.

    Weights are quantised once per output channel group by PyTorch's dynamic
    quantisation, activations on the fly per batch; convolutions, norms and
    attention stay fp32. Opt-in: measured speed and mask IoU against fp32 are in
    ``docs/performance.md`` (``benchmarks/report.py`` prints them). CPU only.

    Parameters
    ----------
    model
        A SAM module on the CPU.

    Returns
    -------
    torch.nn.Module
        The quantised copy, eval mode, with ``config`` and ``preprocessing`` carried over.

    Raises
    ------
    InputError
        ``model`` is not on the CPU, or this PyTorch build cannot quantise.
    """
    import copy
    import warnings

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise InputError("int8 quantisation runs on the CPU only: move the model with model.to('cpu') first.")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as err:  # a build without the eager quantisation API
        raise InputError(f"This PyTorch build cannot quantise to int8 ({err}); use precision 'bf16' or 'fp32'.") from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch points eager quantisation users to torchao
        quantized = quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


def compile_encoder(model: torch.nn.Module, mode: str | None = None, backend: str = "inductor") -> bool:
    """Run ``model.image_encoder`` through ``torch.compile`` from now on, falling back to eager on failure.

    Compilation happens on the first call (minutes on a small CPU; Inductor caches
    the result on disk, so later processes start faster). If compiling or running
    the compiled encoder raises, a warning is issued once and the eager encoder is
    used from then on, so a platform without a working compiler only loses speed.

    Parameters
    ----------
    model
        A SAM module with an ``image_encoder``.
    mode
        ``torch.compile``'s mode (None, ``"reduce-overhead"``, ``"max-autotune"``).
    backend
        ``torch.compile``'s backend.

    Returns
    -------
    bool
        False when this PyTorch has no ``torch.compile`` (nothing changed), else True.
    """
    import warnings

    if not hasattr(torch, "compile"):
        return False
    encoder = model.image_encoder
    eager = encoder.forward  # the class's forward bound to this encoder, captured before it is replaced
    compiled = torch.compile(eager, mode=mode, backend=backend)
    failed = False

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal failed
        if not failed:
            try:
                return compiled(x)
            except Exception as err:  # any compiler failure: the eager encoder computes the same thing
                failed = True
                warnings.warn(
                    f"torch.compile of the image encoder failed ({type(err).__name__}: {err}); running it eagerly.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return eager(x)

    encoder.forward = forward
    return True
