"""Reliability of prompted segmentation: no silently wrong embeddings, masks or cached results.

Issue 9, items 5 (the embedding cache accepted another image or model), 6 (silent
wrong results: offset intensities, channels-first RGB, empty points, NaN mask_input)
and 7 (a corrupt cache chunk gave a raw traceback).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.embedding_cache import EmbeddingCache
from napari_sam.engine.predict.predictor import ImageEmbedding, Predictor
from napari_sam.engine.predict.preprocessing import to_uint8_rgb


@pytest.fixture
def predictor(tiny_model):
    p = Predictor(tiny_model, device="cpu", precision="fp32")
    p.set_image(np.random.default_rng(0).random((40, 50)).astype(np.float32))
    return p


def _embedding(value: float = 1.0) -> ImageEmbedding:
    features = torch.full((1, 4, 8, 8), float(value))
    features[0, 0, 0, 0] = -value
    return ImageEmbedding(features, (30, 40), (6, 8))


# ------------------------------------------------------------------ item 5
def test_image_fingerprint_tells_same_shape_uint8_rgb_images_apart():
    from napari_sam.engine.predict.fingerprint import image_fingerprint

    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    edited = rgb.copy()
    edited[31, 47, 2] ^= 1  # one bit of one pixel
    assert image_fingerprint(rgb) != image_fingerprint(edited)
    # content, not the array object or its memory layout, is fingerprinted
    assert image_fingerprint(rgb) == image_fingerprint(np.asfortranarray(rgb.copy()))
    # the same bytes read as another shape or dtype are another image
    assert image_fingerprint(rgb) != image_fingerprint(rgb.reshape(48, 32, 3))
    assert image_fingerprint(rgb) != image_fingerprint(rgb.view(np.int8))


def test_image_fingerprint_of_a_large_image_samples_it_with_its_full_shape():
    from napari_sam.engine.predict.fingerprint import image_fingerprint

    stack = np.random.default_rng(1).integers(0, 4000, (6, 40, 40), dtype=np.uint16)
    budget = stack.nbytes // 10  # force the strided sample
    sampled = image_fingerprint(stack, max_bytes=budget)
    assert sampled == image_fingerprint(stack.copy(), max_bytes=budget)
    assert sampled != image_fingerprint(stack)  # the full hash is another digest
    changed = stack.copy()
    changed[0, 0, 0] += 1  # the sample always includes the first element of each sampled plane
    assert image_fingerprint(changed, max_bytes=budget) != sampled
    assert image_fingerprint(stack[:5], max_bytes=budget) != sampled


@pytest.mark.parametrize("max_bytes", [1 << 30, 3000], ids=["whole", "sampled"])
def test_image_fingerprint_is_the_same_for_numpy_dask_and_zarr(max_bytes):
    import dask.array as da
    import zarr

    from napari_sam.engine.predict.fingerprint import image_fingerprint

    stack = np.random.default_rng(6).integers(0, 999, (5, 30, 40), dtype=np.uint16)
    stored = zarr.create_array(store={}, shape=stack.shape, dtype=stack.dtype, chunks=(1, 16, 16))
    stored[...] = stack
    expected = image_fingerprint(stack, max_bytes)
    assert image_fingerprint(da.from_array(stack, chunks=(2, 7, 9)), max_bytes) == expected
    assert image_fingerprint(stored, max_bytes) == expected


def test_saved_cache_refuses_another_image_of_the_same_shape_and_dtype(tiny_model, tmp_path):
    from napari_sam.engine.predict.fingerprint import cache_fingerprint

    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cache = EmbeddingCache(fingerprint=cache_fingerprint(image, predictor, model="tiny.pt"))
    cache.put((0, 1), predictor.compute_embedding(image))
    cache.save(tmp_path / "emb.zarr")

    same = EmbeddingCache(fingerprint=cache_fingerprint(image.copy(), predictor, model="tiny.pt"))
    assert same.load(tmp_path / "emb.zarr") == 1
    wrong = EmbeddingCache(fingerprint=cache_fingerprint(other, predictor, model="tiny.pt"))
    with pytest.raises(InputError, match="another image or model.*pixels"):
        wrong.load(tmp_path / "emb.zarr")


def test_checkpoint_replaced_at_the_same_path_changes_the_fingerprint(tmp_path):
    from napari_sam.engine.predict.fingerprint import cache_fingerprint
    from napari_sam.model import build_sam, load_model
    from napari_sam.model.checkpoint import save_checkpoint

    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    save_checkpoint(build_sam("tiny_vit_test"), path)
    first = Predictor(load_model(path, device="cpu"), device="cpu", precision="fp32")
    image = np.random.default_rng(3).integers(0, 256, (40, 50), dtype=np.uint8)
    cache = EmbeddingCache(fingerprint=cache_fingerprint(image, first, model=str(path)))
    cache.put((0, 1), first.compute_embedding(image))
    cache.save(tmp_path / "emb.zarr")

    torch.manual_seed(1)
    save_checkpoint(build_sam("tiny_vit_test"), path)  # same path, same architecture, other weights
    second = Predictor(load_model(path, device="cpu"), device="cpu", precision="fp32")
    assert second.encoder_fingerprint() != first.encoder_fingerprint()
    later = EmbeddingCache(fingerprint=cache_fingerprint(image, second, model=str(path)))
    with pytest.raises(InputError, match="encoder"):
        later.load(tmp_path / "emb.zarr")


def test_encoder_fingerprint_is_memoised_and_ignores_the_decoder(tiny_model):
    from napari_sam.engine.predict.fingerprint import encoder_fingerprint

    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    before = predictor.encoder_fingerprint()
    assert predictor.encoder_fingerprint() is before  # computed once per predictor

    with torch.no_grad():
        next(tiny_model.mask_decoder.parameters()).add_(1.0)  # embeddings do not depend on the decoder
    assert encoder_fingerprint(tiny_model) == before
    with torch.no_grad():
        next(tiny_model.image_encoder.parameters()).view(-1)[0] += 1.0
    assert encoder_fingerprint(tiny_model) != before


def _saved_store(tmp_path):
    cache = EmbeddingCache(fingerprint={"model": "tiny"})
    cache.put((0, 1, 2), _embedding(1.0))
    cache.save(tmp_path / "emb.zarr")
    chunks = [p for p in (tmp_path / "emb.zarr" / "plane_0_1_2").rglob("*") if p.is_file() and p.name not in (
        "zarr.json", ".zarray", ".zattrs")]
    assert len(chunks) == 1
    return tmp_path / "emb.zarr", chunks[0]


def test_missing_cache_chunk_is_an_error_not_a_zero_embedding(tmp_path):
    store, chunk = _saved_store(tmp_path)
    chunk.unlink()
    fresh = EmbeddingCache(fingerprint={"model": "tiny"})
    fresh.load(store)
    with pytest.raises(InputError, match=r"plane_0_1_2.*delete the folder .*emb\.zarr"):
        fresh.get((0, 1, 2))
    assert len(fresh) == 0  # nothing half-read is kept


# ------------------------------------------------------------------ item 7
def test_corrupt_cache_chunk_is_a_clear_error(tmp_path):
    store, chunk = _saved_store(tmp_path)
    chunk.write_bytes(b"not a compressed chunk")
    fresh = EmbeddingCache(fingerprint={"model": "tiny"})
    fresh.load(store)
    with pytest.raises(InputError, match=r"corrupt.*plane_0_1_2.*delete the folder"):
        fresh.get((0, 1, 2))


def test_corrupt_cache_metadata_is_a_clear_error(tmp_path):
    store, _ = _saved_store(tmp_path)
    (store / "plane_0_1_2" / "zarr.json").write_text("{not json")
    fresh = EmbeddingCache(fingerprint={"model": "tiny"})
    with pytest.raises(InputError, match="delete the folder"):
        fresh.load(store)


# ------------------------------------------------------------------ item 6
_rng = np.random.default_rng(4)
_LEVELS = _rng.integers(0, 1001, (48, 64))
_UNIT = _rng.random((48, 64))


@pytest.mark.parametrize(
    "plain, offset",
    [
        (_LEVELS.astype(np.uint16), np.uint32(3_000_000_000) + _LEVELS.astype(np.uint32)),
        (_LEVELS.astype(np.int64), np.int64(2**40) + _LEVELS.astype(np.int64)),
        (_UNIT, 1e7 + _UNIT),
    ],
    ids=["uint32+3e9", "int64+2**40", "float64+1e7"],
)
def test_an_intensity_offset_does_not_collapse_grey_levels(plain, offset):
    reference = to_uint8_rgb(plain)
    result = to_uint8_rgb(offset)
    assert len(np.unique(reference)) > 200
    assert len(np.unique(result)) >= len(np.unique(reference)) - 1
    # float64 1e7 + x rounds x to ~2e-9: a pixel right on a rounding boundary may move by one level
    assert np.abs(result.astype(int) - reference.astype(int)).max() <= 1
    assert (result == reference).mean() > 0.999


def test_int64_beyond_float64_precision_is_scaled_exactly_or_refused():
    from napari_sam.engine.predict.preprocessing import intensity_range

    image = np.int64(2**60) + _LEVELS.astype(np.int64)
    np.testing.assert_array_equal(to_uint8_rgb(image), to_uint8_rgb(_LEVELS.astype(np.int64)))
    # a range in float64 cannot say where 2**60 + 500 is: refused, not a few grey levels
    with pytest.raises(InputError, match=r"2\*\*53.*Subtract an offset"):
        to_uint8_rgb(image, intensity_range(image))


def test_offset_image_with_a_given_intensity_range_keeps_grey_levels():
    from napari_sam.engine.predict.preprocessing import intensity_range

    image = np.uint32(3_000_000_000) + _LEVELS.astype(np.uint32)
    out = to_uint8_rgb(image, intensity_range(image))
    assert len(np.unique(out)) > 200


@pytest.mark.parametrize("shape", [(3, 40, 50), (4, 40, 50), (1, 40, 50)])
def test_channels_first_image_is_refused_with_the_fix(tiny_model, shape):
    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    image = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    with pytest.raises(InputError, match=r"channels-first.*np\.moveaxis\(image, 0, -1\)"):
        predictor.set_image(image)
    assert predictor.embedding is None


def test_empty_points_without_another_prompt_are_refused(predictor):
    with pytest.raises(InputError, match="no points"):
        predictor.predict(points=np.zeros((0, 2)), labels=[])
    with pytest.raises(InputError, match="no points"):
        predictor.predict_batch(points=np.zeros((2, 0, 2)), labels=np.zeros((2, 0)))


def test_empty_points_with_a_box_are_the_box_alone(predictor):
    box = [5, 10, 30, 40]
    with_empty = predictor.predict(points=np.zeros((0, 2)), labels=[], box=box, multimask=False)[2]
    box_only = predictor.predict(box=box, multimask=False)[2]
    np.testing.assert_array_equal(with_empty, box_only)
    boxes = np.array([box, [0, 0, 20, 20]], dtype=float)
    batch = predictor.predict_batch(points=np.zeros((2, 0, 2)), labels=np.zeros((2, 0)), boxes=boxes)[2]
    np.testing.assert_array_equal(batch, predictor.predict_batch(boxes=boxes)[2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_mask_input_is_refused(predictor, bad):
    size = predictor.config.low_res_mask_size
    mask = np.zeros((1, size, size), dtype=np.float32)
    mask[0, 3, 4] = bad
    with pytest.raises(InputError, match="mask_input.*NaN or infinite"):
        predictor.predict(points=[[10, 10]], labels=[1], mask_input=mask)
    with pytest.raises(InputError, match="mask_input.*NaN or infinite"):
        predictor.predict_batch(points=[[[10, 10]]], labels=[[1]], mask_input=mask[None])
