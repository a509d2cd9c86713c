"""The wide synthetic distribution (``varied_image``) and the validation-only generator.

Both must give exact instance labels (ids 1..N, one connected piece each, at least
``min_size`` pixels), be deterministic per seed, and actually vary what the issue asks
for: dtypes and intensity ranges, noise models, sizes and densities.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.engine.datasets.synthetic import (
    NOISE_MODELS,
    VARIED_DTYPES,
    SyntheticDataset,
    random_appearance,
    synthetic_dataset,
    synthetic_image,
    varied_image,
    varied_style,
)
from napari_sam.engine.datasets.synthetic_validation import (
    STORAGE_KINDS,
    ValidationDataset,
    validation_image,
)
from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.preprocessing import to_uint8_rgb

SEEDS = range(2000, 2024)


def _assert_exact_instances(labels: np.ndarray, min_size: int = 12) -> None:
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.max() + 1))  # 0..N without gaps
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= min_size
    for object_id, box in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[box] == object_id)[1] == 1, f"object {object_id} is in pieces"


def _contrast(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean object brightness over mean background brightness, as the model sees the image (uint8 RGB)."""
    seen = to_uint8_rgb(image)[..., 0].astype(float)
    return seen[labels > 0].mean() / max(seen[labels == 0].mean(), 1.0)


@pytest.fixture(scope="module")
def varied_samples():
    return [varied_image((128, 128), seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def validation_samples():
    return [validation_image((128, 128), seed) for seed in SEEDS]


def test_varied_images_are_deterministic_and_differ_by_seed():
    first, again, other = varied_image((96, 80), 5), varied_image((96, 80), 5), varied_image((96, 80), 6)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.image.shape == first.labels.shape == (96, 80)
    assert not np.array_equal(first.labels, other.labels)
    # its own random stream: not synthetic_image of the same seed
    assert not np.array_equal(first.labels, synthetic_image((96, 80), seed=5).labels)


def test_varied_images_have_exact_visible_instances(varied_samples):
    for sample in varied_samples:
        _assert_exact_instances(sample.labels)
        assert sample.labels.max() >= 2
        assert _contrast(sample.image, sample.labels) > 1.3


def test_varied_images_vary_dtype_range_noise_size_and_density(varied_samples):
    assert {sample.image.dtype.name for sample in varied_samples} == set(VARIED_DTYPES)
    maxima = [float(sample.image.max()) for sample in varied_samples if sample.image.dtype == np.float32]
    assert max(maxima) > 20 * min(maxima)  # float images at very different scales
    looks = [random_appearance(np.random.default_rng(seed)) for seed in range(60)]
    assert {look.noise for look in looks} == set(NOISE_MODELS)
    assert any(look.haze > 0 for look in looks) and any(look.debris > 0 for look in looks)
    assert any(look.spots > 0 for look in looks) and any(look.spots == 0 for look in looks)
    mean_sizes = [np.bincount(s.labels.ravel())[1:].mean() for s in varied_samples]
    assert max(mean_sizes) > 6 * min(mean_sizes)
    coverage = [np.mean(s.labels > 0) for s in varied_samples]
    assert max(coverage) > 3 * min(coverage)
    styles = [varied_style(np.random.default_rng(seed)) for seed in range(30)]
    assert len({style.blur_sigma for style in styles}) == 30


def test_uint8_varied_images_may_be_dim_or_saturated(varied_samples):
    uint8 = [sample.image for sample in varied_samples if sample.image.dtype == np.uint8]
    assert any((image == 255).any() for image in uint8)  # saturated pixels
    assert any(image.max() < 255 for image in uint8)  # a dim one, stored as it is
    bright = [np.percentile(image, 99) for image in uint8]
    assert max(bright) > 2 * min(bright)


def test_dataset_and_list_give_the_varied_images():
    dataset = SyntheticDataset(3, shape=(64, 64), seed=77, varied=True)
    np.testing.assert_array_equal(dataset[1].image, varied_image((64, 64), 78).image)
    listed = synthetic_dataset(3, shape=(64, 64), seed=77, varied=True)
    np.testing.assert_array_equal(listed[2].labels, dataset[2].labels)
    # without the option the dataset is unchanged: the fixed styles' images
    np.testing.assert_array_equal(SyntheticDataset(1, (64, 64), seed=77)[0].image,
                                  synthetic_image((64, 64), seed=77).image)
    with pytest.raises(InputError, match="2D"):
        varied_image((4, 64, 64))


def test_validation_images_are_deterministic_with_exact_instances(validation_samples):
    first = validation_image((96, 112), 3)
    np.testing.assert_array_equal(first.image, validation_image((96, 112), 3).image)
    np.testing.assert_array_equal(first.labels, validation_image((96, 112), 3).labels)
    assert first.image.shape == (96, 112)
    assert not np.array_equal(first.labels, validation_image((96, 112), 4).labels)
    for sample in validation_samples:
        _assert_exact_instances(sample.labels)
        assert _contrast(sample.image, sample.labels) > 1.3


def test_validation_images_use_other_storage_and_packed_clusters(validation_samples):
    dtypes = {sample.image.dtype.name for sample in validation_samples}
    assert dtypes == {"uint8", "uint16", "int32", "float64"} and len(STORAGE_KINDS) == 4
    twelve_bit = [s.image for s in validation_samples if s.image.dtype == np.uint16]
    assert max(int(image.max()) for image in twelve_bit) <= 4095
    assert any(int(s.image.min()) < 0 for s in validation_samples if s.image.dtype == np.int32)
    # the Voronoi clusters: many objects with a neighbour within two pixels
    crowded = 0
    for sample in validation_samples:
        grown = ndimage.grey_dilation(sample.labels, size=5)
        crowded += int(((grown != sample.labels) & (sample.labels > 0) & (grown > 0)).any())
    assert crowded >= len(validation_samples) // 3


def test_validation_dataset_is_lazy_and_indexes_by_seed():
    dataset = ValidationDataset(4, shape=(64, 64), seed=10)
    assert len(dataset) == 4
    np.testing.assert_array_equal(dataset[-1].image, validation_image((64, 64), 13).image)
    with pytest.raises(IndexError):
        dataset[4]
    with pytest.raises(InputError, match="2D"):
        validation_image((0, 64))
