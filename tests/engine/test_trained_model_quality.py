"""End-to-end quality of the tiny SAM trained here (tests/data/tiny_sam_synthetic.pt, a TEST FIXTURE).

Measured through the public ``Predictor`` on held-out synthetic images: seeds below
1000, never used in training (``tools/train_tiny_model.py`` trains on seeds from
1_000_000 up). Every labelled object of every image counts; prompts are what a user
gives: the object's tight box, one click at its most interior pixel, or both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from napari_sam.engine.datasets.synthetic import synthetic_dataset
from napari_sam.engine.training.loop import evaluate_with_predictor

DATA_DIR = Path(__file__).parents[1] / "data"
HELD_OUT_SEEDS = 0  # synthetic_dataset(HELD_OUT_IMAGES, seed=0): seeds 0..7
HELD_OUT_IMAGES = 8


@pytest.fixture(scope="module")
def held_out_quality():
    from napari_sam.model import load_model

    model = load_model(DATA_DIR / "tiny_sam_synthetic.pt", device="cpu")
    data = synthetic_dataset(HELD_OUT_IMAGES, shape=(256, 256), seed=HELD_OUT_SEEDS, style="mixed")
    return evaluate_with_predictor(model, data, device="cpu", precision="fp32")


def test_fixture_matches_its_recorded_sha256():
    recorded = (DATA_DIR / "tiny_sam_synthetic.sha256").read_text().split()[0]
    actual = hashlib.sha256((DATA_DIR / "tiny_sam_synthetic.pt").read_bytes()).hexdigest()
    assert actual == recorded


def test_trained_fixture_is_the_tiny_trained_config(trained_model):
    assert trained_model.config.name == "tiny_trained_test"


def test_enough_objects_are_measured(held_out_quality):
    assert held_out_quality["objects"] >= 150


def test_one_box_segments_an_object(held_out_quality):
    assert held_out_quality["box"] >= 0.85


def test_one_click_at_the_centre_segments_an_object(held_out_quality):
    assert held_out_quality["point"] >= 0.75


def test_click_and_box_segment_an_object(held_out_quality):
    assert held_out_quality["point_box"] >= 0.85
