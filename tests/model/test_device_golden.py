"""Device checks: our networks on the device named by ``NAPARI_SAM_TEST_DEVICE`` (default ``cpu``).

Selected with ``-m device``; ``benchmarks/device_check.sh`` runs them on CUDA. On a CPU-only
CI they run on the CPU like every other test. A device that is asked for but missing is an
error, never a skip: a GPU run that silently tests nothing would prove nothing.

* our fp32 predictor ON THE DEVICE against the reference goldens recorded on a CPU
  (``tests/data/golden``; the same tolerances as ``test_reference_equality.py``);
* lower precision (bf16; fp16 too on CUDA) against fp32 on the device, on the trained tiny
  model where masks mean something: best-mask IoU per object;
* automatic segmentation on the device against fp32 on the CPU: instance F1;
* the tile batch of the encoder on the device equals one tile at a time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.device

DEVICE = os.environ.get("NAPARI_SAM_TEST_DEVICE", "cpu")

_spec = importlib.util.spec_from_file_location("_golden_equality", Path(__file__).parent / "test_reference_equality.py")
EQ = sys.modules.setdefault("_golden_equality", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(EQ)  # the golden replay's helpers and tolerances, one source

# The lower precision may move a mask's border by a pixel or two: the mean best-mask IoU
# over objects must stay at least this (issue 15 asks >= 0.97 for vit_b at auto precision).
MIN_LOW_PRECISION_IOU = 0.97
MIN_AUTOMATIC_F1 = 0.9


@pytest.fixture(scope="module")
def device() -> torch.device:
    from napari_sam.engine.predict.device import select_device

    return select_device(DEVICE)  # InputError (a failure, not a skip) when the device is missing


def low_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    if device.type == "mps":
        return ["fp16"]
    return ["bf16"]


@pytest.fixture(scope="module", params=EQ.MODELS)
def golden_on_device(request, device):
    from napari_sam.engine import Predictor
    from napari_sam.model import build_sam

    name = request.param
    meta = json.loads((EQ.GOLDEN_DIR / f"{name}.json").read_text())
    with np.load(EQ.GOLDEN_DIR / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    model = EQ.W.load_deterministic_weights(build_sam(name), meta["weight_seed"])
    golden = EQ.Golden(name, meta, arrays, model)
    predictor = Predictor(model, device=device, precision="fp32")
    predictor.set_image(EQ.golden_image(golden))
    return golden, predictor


def test_fp32_embedding_on_the_device_matches_the_cpu_golden(golden_on_device):
    golden, predictor = golden_on_device
    assert predictor.embedding.features.device.type == torch.device(DEVICE).type
    features = predictor.embedding.features.float().cpu()[0]
    stride = golden.meta["channel_stride"]
    error = EQ.relative_rms(features[::stride].numpy(), golden.arrays["pipeline/features_subset"])
    assert error < EQ.PIPELINE_RELATIVE_RMS


@pytest.mark.parametrize("case_name", EQ.PIPELINE_CASES)
def test_fp32_masks_on_the_device_match_the_cpu_golden(golden_on_device, case_name):
    golden, predictor = golden_on_device
    EQ.test_predictor_matches_reference_predictor(golden, predictor, case_name)


@pytest.fixture(scope="module")
def trained_sample(trained_model_path):
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.model import load_model

    model = load_model(trained_model_path, device="cpu")
    sample = synthetic_image((256, 256), seed=3, style="mixed")
    return model, sample


def _object_prompts(labels: np.ndarray, count: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Tight boxes (B, 4) and the most interior pixel (B, 1, 2) of up to ``count`` objects, (row, col)."""
    from scipy import ndimage

    boxes, points = [], []
    for index in range(1, min(int(labels.max()), count) + 1):
        mask = labels == index
        rows, cols = np.nonzero(mask)
        boxes.append([rows.min(), cols.min(), rows.max(), cols.max()])
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        points.append([np.unravel_index(int(np.argmax(distance)), mask.shape)])
    return np.asarray(boxes, dtype=float), np.asarray(points, dtype=float)


def test_lower_precision_masks_agree_with_fp32_on_the_device(trained_sample, device):
    from napari_sam.engine import Predictor

    model, sample = trained_sample
    boxes, points = _object_prompts(sample.labels)
    results = {}
    for name in ["fp32", *low_precisions(device)]:
        predictor = Predictor(model, device=device, precision=name)
        predictor.set_image(sample.image)
        masks, _, _ = predictor.predict_batch(points=points, labels=np.ones(points.shape[:2]), boxes=boxes)
        results[name] = masks[:, 0]
    assert len(results["fp32"]) >= 5
    for name in low_precisions(device):
        ious = [EQ.mask_iou(a, b) for a, b in zip(results["fp32"], results[name])]
        assert float(np.mean(ious)) >= MIN_LOW_PRECISION_IOU, (name, np.round(ious, 3))


def test_automatic_on_the_device_agrees_with_cpu_fp32(trained_sample, device):
    from napari_sam.engine import Predictor
    from napari_sam.engine.automatic.generation import generate_labels
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.metrics import f1_score

    model, sample = trained_sample
    params = AutomaticParams(points_per_side=16, pred_iou_thresh=0.5, nested_thresh=0.8)
    cpu = generate_labels(Predictor(model, device="cpu", precision="fp32"), sample.image, params)
    on_device = generate_labels(Predictor(model, device=device, precision="auto"), sample.image, params)
    assert cpu.max() >= 5
    assert f1_score(cpu, on_device) >= MIN_AUTOMATIC_F1


def test_encoder_tile_batch_equals_one_tile_at_a_time(trained_sample, device):
    from napari_sam.engine import Predictor
    from napari_sam.engine.automatic.tiling import embed_windows

    model, sample = trained_sample
    predictor = Predictor(model, device=device, precision="fp32")
    windows = [sample.image[:128, :128], sample.image[128:, 128:], sample.image[64:192, 32:160]]
    batched = embed_windows(predictor, windows, (0.0, float(sample.image.max())))
    for window, embedding in zip(windows, batched):
        single = predictor.compute_embedding(window, (0.0, float(sample.image.max())))
        torch.testing.assert_close(embedding.features, single.features, rtol=1e-3, atol=1e-4)
