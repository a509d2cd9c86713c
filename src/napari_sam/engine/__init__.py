"""numpy/torch algorithms (no napari, no Qt): predictor, image preparation, tiling, training.

Names are imported lazily so ``import napari_sam.engine`` does not import torch.
"""

from __future__ import annotations

import importlib

from .errors import InputError

_LAZY = {
    "Predictor": ".predictor",
    "ImageEmbedding": ".predictor",
    "select_device": ".device",
    "segment_everything": ".everything",
    "segment_everything_steps": ".everything",
    "AutomaticParams": ".automatic",
    "generate_labels": ".automatic",
}

__all__ = ["InputError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
