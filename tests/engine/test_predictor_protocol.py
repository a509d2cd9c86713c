"""The Predictor protocol: SAM's Predictor and a minimal stand-in both satisfy it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from napari_sam.engine.predict.predictor import ImageEmbedding, Predictor
from napari_sam.engine.predict.protocol import ModelConfigLike, PredictorProtocol
from napari_sam.model.config import TINY_VIT

_METHODS = ("compute_embedding", "set_embedding", "predict", "predict_batch", "encoder_fingerprint")


class ConstantBackend:
    """The smallest backend the napari side can use: every prompt gives the whole image."""

    def __init__(self):
        self.config = TINY_VIT
        self.device = torch.device("cpu")
        self.autocast_dtype = None
        self._embedding: ImageEmbedding | None = None

    def compute_embedding(self, image, intensity_range=None):
        size = tuple(np.shape(image)[:2])
        return ImageEmbedding(torch.zeros(1, 1, 1, 1), size, size)

    def set_embedding(self, embedding):
        self._embedding = embedding

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        mask = np.ones(self._embedding.original_size, dtype=bool)
        return mask[None], np.ones(1, np.float32), np.zeros((1, 4, 4), np.float32)

    def predict_batch(self, points=None, labels=None, boxes=None, mask_input=None, multimask=False):
        masks, scores, logits = self.predict()
        return masks[None], scores[None], logits[None]

    def encoder_fingerprint(self):
        return "constant"


def test_sam_predictor_satisfies_the_protocol(tiny_model):
    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    assert isinstance(predictor, PredictorProtocol)
    assert isinstance(predictor.config, ModelConfigLike)
    predictor.set_embedding(predictor.compute_embedding(np.zeros((20, 30), np.uint8)))
    masks, scores, logits = predictor.predict(points=[[5, 5]], labels=[1], multimask=False)
    assert masks.shape == (1, 20, 30) and scores.shape == (1,)
    assert logits.shape == (1, predictor.config.low_res_mask_size, predictor.config.low_res_mask_size)


@pytest.mark.parametrize("method", _METHODS)
def test_sam_predictor_takes_the_protocols_arguments(method):
    """isinstance only sees names: check that the parameters and defaults agree too."""
    wanted = inspect.signature(getattr(PredictorProtocol, method)).parameters
    actual = inspect.signature(getattr(Predictor, method)).parameters
    assert [(p.name, p.default) for p in wanted.values()] == [(p.name, p.default) for p in actual.values()]


def test_a_minimal_backend_satisfies_the_protocol():
    backend = ConstantBackend()
    assert isinstance(backend, PredictorProtocol)
    backend.set_embedding(backend.compute_embedding(np.zeros((6, 7))))
    assert backend.predict(points=[[1, 1]], labels=[1])[0].shape == (1, 6, 7)


@pytest.mark.parametrize("missing", [*_METHODS, "config", "device", "autocast_dtype"])
def test_a_backend_missing_a_member_does_not_satisfy_it(missing):
    backend = ConstantBackend()
    if missing in backend.__dict__:
        del backend.__dict__[missing]
        assert not isinstance(backend, PredictorProtocol)
    else:
        stripped = type("Stripped", (), {k: v for k, v in vars(ConstantBackend).items() if k != missing})
        assert not isinstance(stripped(), PredictorProtocol)


def test_model_config_needs_the_sizes_the_napari_side_reads():
    assert isinstance(TINY_VIT, ModelConfigLike)

    class NameOnly:
        name = "x"

    assert not isinstance(NameOnly(), ModelConfigLike)
