"""Shared fixtures: models the project makes itself (no downloads, ever)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
TRAINED_MODEL_PATH = DATA_DIR / "tiny_sam_synthetic_v2.pt"  # fixture v2
TRAINED_MODEL_V1_PATH = DATA_DIR / "tiny_sam_synthetic.pt"  # fixture v1: v2's --init, and two tests (see below)


@pytest.fixture
def tiny_model():
    """A random-weight SAM in the tiny ViT configuration (256 input), seeded, eval mode, CPU."""
    import torch

    from napari_sam.model import build_sam

    torch.manual_seed(0)
    return build_sam("tiny_vit_test").eval()


@pytest.fixture(scope="session")
def trained_model_path() -> Path:
    """The file of ``trained_model`` (fixture v2: config ``tiny_trained_v2``, with an instance decoder)."""
    if not TRAINED_MODEL_PATH.exists():
        pytest.fail(f"The trained test model is missing: {TRAINED_MODEL_PATH}; see tests/data/README.md to rebuild it.")
    return TRAINED_MODEL_PATH


@pytest.fixture
def trained_model(trained_model_path):
    """The tiny SAM trained here on synthetic nuclei (test fixture v2; see tests/data/README.md)."""
    from napari_sam.model import load_model

    return load_model(trained_model_path, device="cpu")


@pytest.fixture(scope="session")
def trained_model_v1_path() -> Path:
    """The file of fixture v1, trained on the "mixed" nuclei style only (no global attention, no decoder).

    Every quality test uses v2 (``trained_model``). v1 serves the two tests that v2 cannot: adapting
    to a new style within 20 fine-tuning steps (v2, trained widely, does not move measurably), and the
    stopping rules of propagation on repeated planes (v2's answer to its own mask grows 5-10% a plane).
    """
    if not TRAINED_MODEL_V1_PATH.exists():
        pytest.fail(f"Fixture v1 is missing: {TRAINED_MODEL_V1_PATH}; see tests/data/README.md.")
    return TRAINED_MODEL_V1_PATH
