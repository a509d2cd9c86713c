"""SAM networks, checkpoint loading and the model zoo (no napari, no engine imports).

Heavy submodules (torch) are imported lazily: ``from napari_sam.model import load_model``
only imports torch when called.
"""

from __future__ import annotations

from napari_sam.model.config import (
    CONFIGS,
    SamConfig,
    TinyViTEncoderConfig,
    ViTEncoderConfig,
)

__all__ = ["CONFIGS", "SamConfig", "TinyViTEncoderConfig", "ViTEncoderConfig", "build_sam", "load_model"]


def build_sam(config: SamConfig | str):
    """Build a randomly initialised SAM model (``torch.nn.Module``) from a config or config name."""
    from napari_sam.model.sam.model import build_sam as _build

    return _build(config)


def load_model(name_or_path, device=None, **kwargs):
    """Load a SAM model from a zoo name or a local checkpoint file (eval mode, on ``device``).

    Keyword arguments (``config=``, ``progress=``) go to :func:`napari_sam.model.checkpoint.load_model`.
    """
    from napari_sam.model.checkpoint import load_model as _load

    return _load(name_or_path, device=device, **kwargs)
