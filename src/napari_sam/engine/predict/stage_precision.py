"""Which precision each stage of the pipeline computes in: the one rule, chosen by measurement.

A predictor's precision (``resolve_precision``) says what the user allows; whether a
stage actually runs in that lower precision depends on whether it was measured FASTER
there at equal quality. Stages:

* ``encoder``: the image encoder (``set_image``, tiles, stacks);
* ``decoder_batch``: the mask decoder over many prompts at once (automatic segmentation);
* ``postprocess``: thresholds, stability, boxes, NMS, upsampling of survivors: always fp32
  (these are comparisons and small matmuls; bf16 logits would move mask borders).

Measured (``benchmarks/report.py``; numbers in ``docs/performance.md``):

* CPU with native bf16 (AVX-512 BF16 / AMX): the ViT-B encoder is ~1.7x faster in bf16 at
  mask IoU >= 0.97 against fp32; the decoder over prompt batches was SLOWER in bf16
  (automatic segmentation of one image with the tiny model: 43 s against 34 s; four
  images 15.7 s against 14.3 s): its matrices are small (256 channels, 64 x 64 tokens), and
  autocast's casts cost more than the bf16 matmuls save. So on a CPU: encoder bf16,
  decoder batches fp32.
* CUDA: bf16 tensor cores win on both (and fp16 where asked for).
* MPS: ``auto`` already means fp32; an explicit lower precision is honoured.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

STAGES = ("encoder", "decoder_batch", "postprocess")

# (device type, stage) -> True when the lower precision was measured faster at equal quality.
# Missing pairs default to True (the user's precision is honoured).
LOWER_PRECISION_PAYS: dict[tuple[str, str], bool] = {
    ("cpu", "encoder"): True,
    ("cpu", "decoder_batch"): False,
    ("cpu", "postprocess"): False,
    ("cuda", "postprocess"): False,
    ("mps", "postprocess"): False,
}

_forced: contextvars.ContextVar[dict[str, torch.dtype | None]] = contextvars.ContextVar("forced", default={})


def stage_dtype(stage: str, dtype: torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype ``stage`` runs in on ``device`` when the predictor allows ``dtype``.

    Parameters
    ----------
    stage
        One of :data:`STAGES`.
    dtype
        The predictor's autocast dtype (``Predictor.autocast_dtype``); None is fp32.
    device
        Where the stage runs.

    Returns
    -------
    torch.dtype or None
        ``dtype`` when the lower precision pays off for this stage on this device
        (see :data:`LOWER_PRECISION_PAYS`), else None (fp32).

    Raises
    ------
    ValueError
        ``stage`` is not one of :data:`STAGES`.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
    forced = _forced.get()
    if stage in forced:
        return forced[stage]
    if dtype is None:
        return None
    device_type = torch.device(device).type
    return dtype if LOWER_PRECISION_PAYS.get((device_type, stage), True) else None


@contextlib.contextmanager
def forced_stage_dtype(stage: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Within this context ``stage`` runs in ``dtype`` whatever the rule says (for benchmarks that measure the rule).

    Parameters
    ----------
    stage
        One of :data:`STAGES`.
    dtype
        The autocast dtype to use, None for fp32.

    Yields
    ------
    None
        Nothing; the override ends with the context.

    Raises
    ------
    ValueError
        ``stage`` is not one of :data:`STAGES`.
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
    token = _forced.set({**_forced.get(), stage: dtype})
    try:
        yield
    finally:
        _forced.reset(token)
