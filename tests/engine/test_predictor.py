"""Predictor API: shapes, batching, caching and clear errors that leave no partial state."""

import numpy as np
import pytest

from napari_sam.engine import InputError, Predictor


@pytest.fixture
def predictor(tiny_model):
    p = Predictor(tiny_model, device="cpu", precision="fp32")
    p.set_image(np.random.default_rng(0).random((60, 90)).astype(np.float32))
    return p


def test_predict_shapes_multimask_and_single(predictor):
    size = predictor.config.low_res_mask_size
    masks, scores, logits = predictor.predict(points=[[30, 40]], labels=[1])
    assert masks.shape == (3, 60, 90) and masks.dtype == bool
    assert scores.shape == (3,) and logits.shape == (3, size, size)
    masks1, scores1, logits1 = predictor.predict(box=[10, 20, 40, 70], multimask=False)
    assert masks1.shape == (1, 60, 90) and scores1.shape == (1,) and logits1.shape == (1, size, size)
    # feeding logits back as mask_input works and changes the result
    _, _, logits2 = predictor.predict(points=[[30, 40]], labels=[1], mask_input=logits[:1], multimask=False)
    assert not np.allclose(logits2, logits1)


def test_predict_batch_equals_single_predictions(predictor):
    points = np.array([[[30, 40], [10, 10]], [[50, 80], [5, 60]]], dtype=float)
    labels = np.array([[1, 0], [1, 1]])
    boxes = np.array([[5, 5, 45, 60], [20, 30, 59, 89]], dtype=float)
    masks, scores, logits = predictor.predict_batch(points, labels, boxes)
    assert masks.shape == (2, 1, 60, 90)
    for i in range(2):
        m, s, lg = predictor.predict(points[i], labels[i], boxes[i], multimask=False)
        np.testing.assert_allclose(lg, logits[i], atol=1e-4)
        np.testing.assert_allclose(s, scores[i], atol=1e-5)


def test_cached_embedding_gives_identical_results(tiny_model):
    p = Predictor(tiny_model, device="cpu", precision="fp32")
    image = np.random.default_rng(3).integers(0, 4000, (50, 50)).astype(np.uint16)
    emb = p.compute_embedding(image)
    assert p.embedding is None  # computing does not change the state
    p.set_embedding(type(emb).from_numpy(emb.to_numpy()))
    a = p.predict(points=[[25, 25]], labels=[1])[2]
    p.set_image(image)
    b = p.predict(points=[[25, 25]], labels=[1])[2]
    np.testing.assert_array_equal(a, b)


def test_predict_without_image_is_refused(tiny_model):
    p = Predictor(tiny_model, device="cpu", precision="fp32")
    with pytest.raises(InputError, match="set_image"):
        p.predict(points=[[1, 1]], labels=[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points": [[30, 200]], "labels": [1]}, "outside the image"),
        ({"points": [[-3, 10]], "labels": [1]}, "outside the image"),
        ({"points": [[30, 40], [1, 1]], "labels": [1]}, "one label per point"),
        ({"points": [[30, 40]], "labels": [2]}, "1 \\(positive\\) or 0"),
        ({"points": [30, 40], "labels": [1]}, "shape \\(N, 2\\)"),
        ({"points": [[np.nan, 40]], "labels": [1]}, "NaN"),
        ({"points": [[30, 40]]}, "Points and labels go together"),
        ({"box": [40, 10, 20, 50]}, "min > max"),
        ({"box": [1, 2, 3]}, "shape \\(4,\\)"),
        ({"box": [100, 100, 120, 130]}, "entirely outside"),
        ({"mask_input": np.zeros((1, 7, 7))}, "mask_input"),
        ({}, "at least one prompt"),
    ],
)
def test_bad_prompts_are_refused_clearly(predictor, kwargs, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(**kwargs)


def test_failed_set_image_keeps_previous_image(predictor):
    before = predictor.predict(points=[[30, 40]], labels=[1])[2]
    for bad in (np.zeros((2, 3, 4, 5)), np.zeros((0, 4)), np.full((8, 8), np.nan)):
        with pytest.raises(InputError):
            predictor.set_image(bad)
    after = predictor.predict(points=[[30, 40]], labels=[1])[2]
    np.testing.assert_array_equal(before, after)


def test_embedding_of_another_model_is_refused(predictor):
    import torch

    from napari_sam.engine import ImageEmbedding

    foreign = ImageEmbedding(torch.zeros(1, 256, 64, 64), (60, 90), (170, 256))
    with pytest.raises(InputError, match="another model"):
        predictor.set_embedding(foreign)


def test_box_past_the_border_is_clipped_not_refused(predictor):
    inside = predictor.predict(box=[10, 20, 59, 89], multimask=False)[2]
    past = predictor.predict(box=[10, 20, 80, 120], multimask=False)[2]
    np.testing.assert_allclose(inside, past, atol=1e-5)


def test_unknown_precision_and_device_are_refused(tiny_model):
    with pytest.raises(InputError, match="precision"):
        Predictor(tiny_model, device="cpu", precision="fp8")
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        Predictor(tiny_model, device="cpu", precision="fp16")
    with pytest.raises(InputError, match="device"):
        Predictor(tiny_model, device="tpu")
