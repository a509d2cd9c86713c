"""``Predictor`` with a SAM 2 model: the same API as SAM, high-resolution features carried everywhere.

A tiny SAM 2 (``tiny_sam2_test``) with the deterministic weights of its golden file; equality with
Meta's predictor itself is in ``tests/model/test_sam2_reference_equality.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine import EmbeddingCache, ImageEmbedding, Predictor
from napari_sam.engine.errors import InputError
from napari_sam.model import build_sam
from napari_sam.model.config import TINY_SAM2, TINY_VIT
from napari_sam.model.sam2 import build_sam2

_spec = importlib.util.spec_from_file_location("_sam2_weights", Path(__file__).parents[1] / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

IMAGE = W.synthetic_cells_image(120, 160, seed=3)
POINT = [[60.0, 70.0]]  # (row, col)
BOX = [30.0, 40.0, 95.0, 130.0]  # (min_row, min_col, max_row, max_col)


@pytest.fixture(scope="module")
def sam2_model():
    return W.load_deterministic_weights(build_sam2(TINY_SAM2), seed=1)


@pytest.fixture(scope="module")
def predictor(sam2_model):
    predictor = Predictor(sam2_model, device="cpu", precision="fp32")
    predictor.set_image(IMAGE)
    return predictor


def test_predict_returns_masks_at_the_image_size_and_clamped_logits(predictor):
    masks, scores, logits = predictor.predict(points=POINT, labels=[1])
    assert masks.shape == (3, *IMAGE.shape[:2]) and masks.dtype == bool
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))  # SAM 2's IoU head ends in a sigmoid
    low = TINY_SAM2.low_res_mask_size
    assert logits.shape == (3, low, low) and np.abs(logits).max() <= 32.0
    assert predictor.embedding.input_size == (TINY_SAM2.img_size, TINY_SAM2.img_size)
    single, single_scores, _ = predictor.predict(points=POINT, labels=[1], multimask=False)
    assert single.shape == (1, *IMAGE.shape[:2]) and single_scores.shape == (1,)


def test_predict_batch_equals_one_predict_per_object(predictor):
    boxes = np.array([BOX, [5.0, 5.0, 60.0, 80.0]])
    masks, scores, logits = predictor.predict_batch(boxes=boxes)
    assert masks.shape == (2, 1, *IMAGE.shape[:2])
    for index, box in enumerate(boxes):
        one_mask, one_score, one_logits = predictor.predict(box=box, multimask=False)
        np.testing.assert_allclose(logits[index], one_logits, atol=1e-4)
        np.testing.assert_allclose(scores[index], one_score, atol=1e-5)
        assert (masks[index] != one_mask).mean() < 1e-3


def test_mask_input_feedback_and_points_with_box(predictor):
    masks, scores, logits = predictor.predict(points=POINT, labels=[1])
    best = logits[int(scores.argmax())][None]
    refined, _, _ = predictor.predict(points=POINT + [[40.0, 120.0]], labels=[1, 0], mask_input=best, multimask=False)
    with_box, _, _ = predictor.predict(points=POINT, labels=[1], box=BOX, multimask=False)
    assert refined.shape == with_box.shape == (1, *IMAGE.shape[:2])
    with pytest.raises(InputError, match="mask_input must be low-resolution logits"):
        predictor.predict(points=POINT, labels=[1], mask_input=np.zeros((1, 8, 8), np.float32))


def test_embedding_survives_numpy_and_an_embedding_cache_on_disk(predictor, sam2_model, tmp_path):
    embedding = predictor.embedding
    assert [tuple(f.shape[1:]) for f in embedding.high_res_features] == list(TINY_SAM2.high_res_shapes)
    expected = predictor.predict(points=POINT, labels=[1])

    again = Predictor(sam2_model, device="cpu", precision="fp32")
    again.set_embedding(ImageEmbedding.from_numpy(embedding.to_numpy()))
    for ours, theirs in zip(again.predict(points=POINT, labels=[1]), expected):
        np.testing.assert_array_equal(ours, theirs)

    cache = EmbeddingCache()
    cache.put((0,), embedding)
    assert cache.nbytes == sum(t.numel() * 4 for t in (embedding.features, *embedding.high_res_features))
    cache.save(tmp_path / "embeddings.zarr")
    reopened = EmbeddingCache()
    assert reopened.load(tmp_path / "embeddings.zarr") == 1 and reopened.keys() == [(0,)]
    again.set_embedding(reopened.get((0,)))
    for ours, theirs in zip(again.predict(points=POINT, labels=[1]), expected):
        np.testing.assert_array_equal(ours, theirs)


def test_embeddings_of_sam_and_sam2_are_not_interchangeable(predictor):
    # tiny_vit_test and tiny_sam2_test make image embeddings of the same shape: the high-res features tell them apart
    sam = Predictor(build_sam(TINY_VIT), device="cpu", precision="fp32")
    sam_embedding = sam.compute_embedding(IMAGE)
    assert sam_embedding.features.shape == predictor.embedding.features.shape
    with pytest.raises(InputError, match="computed with another model"):
        predictor.set_embedding(sam_embedding)
    with pytest.raises(InputError, match="computed with another model"):
        sam.set_embedding(predictor.embedding)


def test_auto_precision_follows_the_same_rules_and_bf16_stays_close(sam2_model, predictor):
    from napari_sam.engine.predict.device import resolve_precision

    auto = Predictor(sam2_model, device="cpu", precision="auto")
    assert auto.autocast_dtype == resolve_precision("auto", torch.device("cpu"))
    bf16 = Predictor(sam2_model, device="cpu", precision="bf16")
    bf16.set_image(IMAGE)
    assert bf16.embedding.features.dtype == torch.float32  # stored in fp32 whatever the compute precision
    masks, scores, _ = bf16.predict(box=BOX, multimask=False)
    reference, reference_scores, _ = predictor.predict(box=BOX, multimask=False)
    iou = (masks & reference).sum() / max((masks | reference).sum(), 1)
    assert iou > 0.8 and abs(float(scores[0] - reference_scores[0])) < 0.1


@pytest.mark.parametrize("name", ["no_mem_embed", "sam_mask_decoder.conv_s0.weight", "sam_mask_decoder.conv_s1.bias"])
def test_encoder_fingerprint_covers_what_shapes_sam2_embeddings_outside_the_encoder(sam2_model, name):
    # the embedding gets no_mem_embed added and the high-res features pass conv_s0/conv_s1: a checkpoint
    # with the same trunk but other values there computes other embeddings, so it must not share a cache
    import copy

    from napari_sam.engine.predict.fingerprint import encoder_fingerprint

    other = copy.deepcopy(sam2_model)
    with torch.no_grad():
        other.get_parameter(name).add_(0.5)
    assert encoder_fingerprint(other) != encoder_fingerprint(sam2_model)
    before = Predictor(sam2_model, device="cpu", precision="fp32").compute_embedding(IMAGE)
    after = Predictor(other, device="cpu", precision="fp32").compute_embedding(IMAGE)
    changed = [not torch.equal(a, b) for a, b in zip((before.features, *before.high_res_features), (after.features, *after.high_res_features))]
    assert any(changed)  # the cached embedding really differs


def test_encoder_fingerprint_of_sam2_still_ignores_the_rest_of_the_decoder(sam2_model):
    import copy

    from napari_sam.engine.predict.fingerprint import encoder_fingerprint

    other = copy.deepcopy(sam2_model)
    with torch.no_grad():
        for name, parameter in other.sam_mask_decoder.named_parameters():
            if not name.startswith(("conv_s0", "conv_s1")):
                parameter.add_(0.5)
        other.obj_ptr_proj.layers[0].weight.add_(0.5)
    assert encoder_fingerprint(other) == encoder_fingerprint(sam2_model)
