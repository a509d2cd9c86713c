"""End-to-end quality of the trained test fixture (v2: tests/data/tiny_sam_synthetic_v2.pt, a TEST FIXTURE).

Every test that needs a trained model uses v2 (``trained_model`` / ``trained_model_path`` in
tests/conftest.py). v1 (tests/data/tiny_sam_synthetic.pt) stays only as the ``--init`` of v2's
training; its bars (box and click + box >= 0.85, click >= 0.75) are kept here for v2.

Fixture v2 is the tiny SAM with a global last encoder block and an instance decoder,
trained jointly (``tools/train_tiny_model.py --data mixed+varied``, seeds from 1_000_000
up). Measured through the public ``Predictor`` on held-out images (seeds below 1000):

* its own generator, :mod:`napari_sam.engine.datasets.synthetic`, as v1 is measured
  (``synthetic_dataset(8, seed=0, style="mixed")``): box IoU >= 0.85 (v1's bar, kept when tests
  move to v2), click + box >= 0.85 (v1's bar) and centre-click IoU >= 0.82 (issue 14's bar; v1: 0.816).
* Issue 14 also asks box >= 0.88 on that set and, on the validation-only generator
  (:mod:`napari_sam.engine.datasets.synthetic_validation`), within 0.05 of the bars. v2 is not
  there yet: box 0.866, validation box 0.793 / point 0.71 (``python tools/evaluate_tiny_model.py
  tests/data/tiny_sam_synthetic_v2.pt``); 600 more steps moved them by 0.002, so the next step is a
  wider model, not a longer run. No test here pretends otherwise.

Instance F1 (IoU 0.5) of the decoder is checked on both; ``tools/evaluate_tiny_model.py``
also reports AMG F1 and the wide ("varied") held-out set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from napari_sam.engine.datasets.synthetic import synthetic_dataset
from napari_sam.engine.datasets.synthetic_validation import ValidationDataset
from napari_sam.engine.training.loop import evaluate_with_predictor

DATA_DIR = Path(__file__).parents[1] / "data"
HELD_OUT_IMAGES = 8
BOX_BAR, POINT_BAR = 0.85, 0.82  # box: v1's bar (issue 14's 0.88 not reached); point: issue 14's bar


@pytest.fixture(scope="module")
def model_v2(trained_model_path):
    from napari_sam.model import load_model

    return load_model(trained_model_path, device="cpu")


@pytest.fixture(scope="module")
def own_images():
    return synthetic_dataset(HELD_OUT_IMAGES, shape=(256, 256), seed=0, style="mixed")


@pytest.fixture(scope="module")
def validation_images():
    return list(ValidationDataset(HELD_OUT_IMAGES, shape=(256, 256), seed=0))


@pytest.fixture(scope="module")
def own_quality(model_v2, own_images):
    return evaluate_with_predictor(model_v2, own_images, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def validation_quality(model_v2, validation_images):
    return evaluate_with_predictor(model_v2, validation_images, device="cpu", precision="fp32")


def _instance_f1(model, images) -> float:
    from napari_sam.engine.automatic.instance import segment_instances
    from napari_sam.engine.metrics import f1_score
    from napari_sam.engine.predict.predictor import Predictor

    predictor = Predictor(model, device="cpu", precision="fp32")
    return float(np.mean([f1_score(s.labels, segment_instances(predictor, s.image)) for s in images]))


@pytest.mark.parametrize("name", ["tiny_sam_synthetic_v2", "tiny_sam_synthetic"], ids=["v2", "v1 (v2's --init)"])
def test_fixture_matches_its_recorded_sha256(name):
    recorded = (DATA_DIR / f"{name}.sha256").read_text().split()[0]
    assert hashlib.sha256((DATA_DIR / f"{name}.pt").read_bytes()).hexdigest() == recorded


def test_fixture_is_the_v2_config_with_global_attention_and_a_decoder(model_v2, trained_model_path):
    assert trained_model_path.name == "tiny_sam_synthetic_v2.pt"
    assert model_v2.config.name == "tiny_trained_v2"
    assert model_v2.config.encoder.global_attn_indexes == (model_v2.config.encoder.depth - 1,)
    assert model_v2.instance_decoder is not None
    assert trained_model_path.stat().st_size < 5 * 2**20  # a few MB


def test_enough_objects_are_measured(own_quality, validation_quality):
    assert own_quality["objects"] >= 150 and validation_quality["objects"] >= 150


def test_one_box_segments_an_object(own_quality):
    assert own_quality["box"] >= BOX_BAR


def test_one_click_at_the_centre_segments_an_object(own_quality):
    assert own_quality["point"] >= POINT_BAR


def test_click_and_box_segment_an_object(own_quality):
    assert own_quality["point_box"] >= 0.85  # v1's bar


def test_instance_decoder_finds_the_objects_of_both_generators(model_v2, own_images, validation_images):
    assert _instance_f1(model_v2, own_images) >= 0.85
    assert _instance_f1(model_v2, validation_images) >= 0.8
