"""EmbeddingCache: LRU bounded in bytes, zarr save/attach, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.embedding_cache import EmbeddingCache, embedding_nbytes
from napari_sam.engine.predict.predictor import ImageEmbedding


def _embedding(value: float, channels: int = 4, size: int = 8) -> ImageEmbedding:
    features = torch.full((1, channels, size, size), float(value))
    features[0, 0, 0, 0] = -value  # not constant, so a wrong read shows
    return ImageEmbedding(features, (30, 40), (6, 8))


def test_get_put_and_lru_eviction_by_bytes():
    one = embedding_nbytes(_embedding(0))
    cache = EmbeddingCache(max_bytes=3 * one)
    for i in range(3):
        cache.put((i,), _embedding(i))
    assert cache.nbytes == 3 * one and len(cache) == 3
    assert cache.get((0,)).features[0, 1, 0, 0].item() == 0  # touch 0: now 1 is least recently used
    cache.put((3,), _embedding(3))
    assert (1,) not in cache
    assert all(k in cache for k in [(0,), (2,), (3,)])
    assert cache.get((1,)) is None
    assert cache.nbytes == 3 * one


def test_replacing_a_key_does_not_double_count():
    cache = EmbeddingCache()
    cache.put((0,), _embedding(1))
    cache.put((0,), _embedding(2))
    assert len(cache) == 1
    assert cache.nbytes == embedding_nbytes(_embedding(0))
    assert cache.get((0,)).features[0, 1, 0, 0].item() == 2


def test_an_entry_larger_than_the_budget_is_still_kept():
    cache = EmbeddingCache(max_bytes=10)
    cache.put((0,), _embedding(1))
    cache.put((1,), _embedding(2))
    assert list(cache.keys()) == [(1,)]


def test_save_then_load_in_a_new_cache_reads_on_demand(tmp_path):
    fingerprint = {"model": "tiny", "image_shape": (3, 30, 40), "intensity_range": [np.float64(0.5), 7.0]}
    cache = EmbeddingCache(fingerprint=fingerprint)
    cache.put((1, 2, 0), _embedding(1.5))
    cache.put((1, 2, 2), _embedding(2.5))
    assert cache.save(tmp_path / "emb.zarr") == 2
    cache.put((1, 2, 1), _embedding(3.5))  # written through once a store is attached

    fresh = EmbeddingCache(fingerprint=fingerprint)
    assert fresh.load(tmp_path / "emb.zarr") == 3
    assert len(fresh) == 0  # nothing read yet
    assert sorted(fresh.keys()) == [(1, 2, 0), (1, 2, 1), (1, 2, 2)]
    loaded = fresh.get((1, 2, 1))
    original = _embedding(3.5)
    torch.testing.assert_close(loaded.features, original.features)
    assert loaded.original_size == (30, 40) and loaded.input_size == (6, 8)
    assert len(fresh) == 1
    assert fresh.get((9, 9, 9)) is None


def test_load_refuses_another_image_or_model(tmp_path):
    cache = EmbeddingCache(fingerprint={"model": "vit_b", "image_shape": [10, 20]})
    cache.put((0,), _embedding(1))
    cache.save(tmp_path / "emb.zarr")
    other = EmbeddingCache(fingerprint={"model": "vit_t", "image_shape": [10, 20]})
    with pytest.raises(InputError, match="model: saved 'vit_b', now 'vit_t'"):
        other.load(tmp_path / "emb.zarr")
    assert other.get((0,)) is None
    with pytest.raises(InputError, match="another image or model"):
        other.save(tmp_path / "emb.zarr")  # adding to a store of another image is refused too


def test_load_refuses_a_folder_that_is_not_a_cache(tmp_path):
    (tmp_path / "not_zarr").mkdir()
    with pytest.raises(InputError):
        EmbeddingCache().load(tmp_path / "not_zarr")
    with pytest.raises(InputError):
        EmbeddingCache().load(tmp_path / "missing.zarr")


def test_saving_needs_integer_keys(tmp_path):
    cache = EmbeddingCache()
    cache.put(("layer", 3), _embedding(1))
    with pytest.raises(InputError, match="non-negative ints"):
        cache.save(tmp_path / "emb.zarr")


def test_round_trip_of_a_real_embedding(tiny_model, tmp_path):
    from napari_sam.engine import Predictor

    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    embedding = predictor.compute_embedding(image)
    cache = EmbeddingCache(fingerprint={"model": "tiny"})
    cache.put((0,), embedding)
    cache.save(tmp_path / "emb.zarr")
    restored = EmbeddingCache(fingerprint={"model": "tiny"})
    restored.load(tmp_path / "emb.zarr")
    predictor.set_embedding(restored.get((0,)))
    masks, scores, _ = predictor.predict(points=[[20, 25]], labels=[1])
    predictor.set_embedding(embedding)
    masks_ref, scores_ref, _ = predictor.predict(points=[[20, 25]], labels=[1])
    np.testing.assert_array_equal(masks, masks_ref)
    np.testing.assert_allclose(scores, scores_ref)
