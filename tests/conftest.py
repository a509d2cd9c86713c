"""Shared fixtures: models the project makes itself (no downloads, ever)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
TRAINED_MODEL_PATH = DATA_DIR / "tiny_sam_synthetic.pt"


@pytest.fixture
def tiny_model():
    """A random-weight SAM in the tiny ViT configuration (256 input), seeded, eval mode, CPU."""
    import torch

    from napari_sam.model import build_sam

    torch.manual_seed(0)
    return build_sam("tiny_vit_test").eval()


@pytest.fixture
def trained_model():
    """The tiny SAM trained here on synthetic nuclei (test fixture; see tests/data/README.md)."""
    from napari_sam.model import load_model

    if not TRAINED_MODEL_PATH.exists():
        pytest.fail(f"The trained test model is missing: {TRAINED_MODEL_PATH}; see tests/data/README.md to rebuild it.")
    return load_model(TRAINED_MODEL_PATH, device="cpu")
