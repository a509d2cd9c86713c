"""Our SAM 2.1 networks and Predictor against golden outputs of Meta's ``sam2`` package.

The goldens (``tests/data/golden/sam2_<model>.npz`` + ``.json``) were recorded by
``tools/make_golden_sam2.py`` in a separate environment holding Meta's package; nothing here
imports it. Both sides fill the official state-dict keys with ``tests/_weights.py``'s
deterministic weights and regenerate inputs from seeds; everything runs in fp32:

* model level: image embedding (no-memory embedding added) and the decoder's two
  high-resolution features from a seeded normalised input; dense positional encoding;
* pipeline level: our public ``Predictor`` on a non-square uint8 RGB image against Meta's
  ``SAM2ImagePredictor`` (its own resize and normalisation), prompts in napari's (row, col) frame:
  mask IoU >= 0.99, scores within 0.01, embeddings and low-res logits close.

The full-size ``sam2.1_hiera_tiny`` is ``slow`` (a 1024x1024 Hiera pass at each level).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

GOLDEN_DIR = Path(__file__).parents[1] / "data" / "golden"

# The SAM goldens' test holds the comparison helpers and tolerances (same rules for SAM 2).
_spec = importlib.util.spec_from_file_location("_sam_equality", Path(__file__).with_name("test_reference_equality.py"))
SAM_EQ = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = SAM_EQ  # its dataclass looks its module up there
_spec.loader.exec_module(SAM_EQ)
W = SAM_EQ.W

MODELS = [
    pytest.param("tiny_sam2_test", id="tiny_sam2_test"),
    pytest.param("sam2.1_hiera_tiny", id="sam2.1_hiera_tiny", marks=pytest.mark.slow),
]
PIPELINE_CASES = (*SAM_EQ.PIPELINE_CASES, "box_multimask")


@pytest.fixture(scope="module", params=MODELS)
def golden(request):
    """Golden arrays of one config and our SAM 2 model of it with the same deterministic weights."""
    from napari_sam.model.sam2 import build_sam2

    name = request.param
    meta = json.loads((GOLDEN_DIR / f"sam2_{name}.json").read_text())
    with np.load(GOLDEN_DIR / f"sam2_{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    model = W.load_deterministic_weights(build_sam2(name), meta["weight_seed"])
    return SAM_EQ.Golden(name, meta, arrays, model)


@pytest.fixture(scope="module")
def our_predictor(golden):
    """Our fp32 ``Predictor`` with the golden's image set (one encoder pass per model)."""
    from napari_sam.engine import Predictor

    predictor = Predictor(golden.model, device="cpu", precision="fp32")
    predictor.set_image(SAM_EQ.golden_image(golden))
    return predictor


def test_golden_lists_exactly_the_cases_tested_here(golden):
    assert tuple(c["name"] for c in golden.meta["pipeline_cases"]) == PIPELINE_CASES
    assert golden.meta["model"] == golden.name == golden.model.config.name


def test_image_encoder_matches_reference(golden):
    spec = golden.meta["encoder_input"]
    x = W.standard_normal(tuple(spec["shape"]), spec["seed"])
    assert W.array_digest(x.numpy()) == spec["digest"], "the encoder input no longer regenerates bit-identically"
    with torch.inference_mode():
        embedding, high_res = golden.model.encode_image(x)
    config = golden.model.config
    assert embedding.shape == (1, config.prompt_embed_dim, config.embedding_size, config.embedding_size)
    assert [tuple(f.shape[1:]) for f in high_res] == list(config.high_res_shapes)
    SAM_EQ.assert_embedding_close(embedding, golden, "encoder", SAM_EQ.MODEL_RTOL, SAM_EQ.MODEL_ATOL)
    for level, feature in enumerate(high_res):
        for part, (value, expected) in _high_res_parts(feature, golden, f"encoder_high_res{level}").items():
            scale = max(float(np.abs(golden.arrays[f"encoder_high_res{level}_channel_mean"]).max()), 1.0)
            np.testing.assert_allclose(
                value, expected, rtol=SAM_EQ.MODEL_RTOL, atol=SAM_EQ.MODEL_ATOL * scale, err_msg=f"high_res{level}_{part}"
            )


def test_dense_positional_encoding_matches_reference(golden):
    with torch.inference_mode():
        dense_pe = golden.model.prompt_encoder.get_dense_pe()
    SAM_EQ.assert_embedding_close(dense_pe, golden, "dense_pe", SAM_EQ.MODEL_RTOL, SAM_EQ.MODEL_ATOL)


def _high_res_parts(feature: torch.Tensor, golden, prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ours, stored) pairs of a high-res feature as the oracle stored it: strided channels and pixels, means."""
    cs, ps = golden.meta["channel_stride"], golden.meta["logit_stride"]
    values = feature.detach().cpu().float()[0]
    ours = {
        "subset": values[::cs, ::ps, ::ps].numpy(),
        "channel_mean": values.mean(dim=(1, 2)).numpy(),
        "position_mean": values.mean(dim=0)[::ps, ::ps].numpy(),
    }
    return {part: (value, golden.arrays[f"{prefix}_{part}"]) for part, value in ours.items()}


def _summary_errors(tensor: torch.Tensor, golden, prefix: str, stride: int) -> dict[str, float]:
    values = tensor.cpu().float()[0]
    return {
        "subset": SAM_EQ.relative_rms(values[::stride].numpy(), golden.arrays[f"{prefix}_subset"]),
        "channel_mean": SAM_EQ.relative_rms(values.mean(dim=(1, 2)).numpy(), golden.arrays[f"{prefix}_channel_mean"]),
        "position_mean": SAM_EQ.relative_rms(values.mean(dim=0).numpy(), golden.arrays[f"{prefix}_position_mean"]),
    }


def test_predictor_embedding_matches_reference(golden, our_predictor):
    embedding = our_predictor.embedding
    size = golden.model.config.img_size
    assert tuple(embedding.input_size) == (size, size)  # SAM 2 resizes the whole image, no padding
    assert tuple(embedding.original_size) == tuple(golden.meta["image"]["shape"][:2])
    stride = golden.meta["channel_stride"]
    errors = _summary_errors(embedding.features, golden, "pipeline/features", stride)
    for level, feature in enumerate(embedding.high_res_features):
        for part, (value, expected) in _high_res_parts(feature, golden, f"pipeline/high_res{level}").items():
            errors[f"high_res{level}_{part}"] = SAM_EQ.relative_rms(value, expected)
    assert max(errors.values()) < SAM_EQ.PIPELINE_RELATIVE_RMS, f"relative RMS errors of the embedding: {errors}"


@pytest.mark.parametrize("case_name", PIPELINE_CASES)
def test_predictor_matches_reference_predictor(golden, our_predictor, case_name):
    case = golden.case("pipeline_cases", case_name)
    prefix = f"pipeline/{case_name}"
    if case["points"] is not None:
        assert [[x, y] for y, x in case["points_rc"]] == case["points"]
    mask_input = golden.arrays.get(f"{prefix}/mask_input")
    masks, scores, logits = our_predictor.predict(
        points=None if case["points_rc"] is None else np.array(case["points_rc"], dtype=float),
        labels=None if case["labels"] is None else np.array(case["labels"]),
        box=None if case["box_rc"] is None else np.array(case["box_rc"], dtype=float),
        mask_input=None if mask_input is None else mask_input.astype(np.float32),
        multimask=case["multimask"],
    )
    expected_shape = tuple(case["masks_shape"])
    assert masks.shape == expected_shape and masks.dtype == bool
    expected = np.unpackbits(golden.arrays[f"{prefix}/masks_packed"], count=int(np.prod(expected_shape)))
    expected = expected.reshape(expected_shape).astype(bool)
    ious = [SAM_EQ.mask_iou(ours, ref) for ours, ref in zip(masks, expected)]
    assert min(ious) >= SAM_EQ.MIN_MASK_IOU, f"mask IoU vs reference {np.round(ious, 4)}"
    np.testing.assert_allclose(scores, golden.arrays[f"{prefix}/scores"], rtol=0, atol=SAM_EQ.SCORE_ATOL)
    stride = golden.meta["logit_stride"]
    assert logits.shape == (expected_shape[0], *[golden.model.config.low_res_mask_size] * 2)
    error = SAM_EQ.relative_rms(logits[:, ::stride, ::stride], golden.arrays[f"{prefix}/low_res_logits"])
    assert error < SAM_EQ.PIPELINE_RELATIVE_RMS, f"relative RMS error of the low-res logits: {error:.4f}"
