"""The synthetic microscopy generator: deterministic, exact instance labels, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as connected_components

from napari_sam.engine.datasets.synthetic import (
    STYLES,
    SyntheticDataset,
    random_style,
    synthetic_dataset,
    synthetic_image,
    synthetic_volume,
)
from napari_sam.engine.errors import InputError


def _fraction_touching(labels: np.ndarray) -> float:
    """Fraction of objects that share a border with another object."""
    touching: set[int] = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[1:]
        b = np.moveaxis(labels, axis, 0)[:-1]
        contact = (a != b) & (a > 0) & (b > 0)
        touching.update(a[contact].tolist())
        touching.update(b[contact].tolist())
    return len(touching) / max(1, labels.max())


def test_same_seed_same_image_and_different_seed_differs():
    first = synthetic_image((128, 160), seed=3)
    again = synthetic_image((128, 160), seed=3)
    other = synthetic_image((128, 160), seed=4)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_labels_are_exact_instances(style):
    sample = synthetic_image((192, 192), seed=11, style=style)
    labels, image = sample.labels, sample.image
    assert labels.shape == image.shape == (192, 192)
    assert labels.dtype == np.int32 and image.dtype == np.float32
    ids = np.unique(labels)
    n = ids.max()
    assert n >= 3
    np.testing.assert_array_equal(ids, np.arange(n + 1))  # 0..N without gaps
    for object_id in ids[1:]:
        mask = labels == object_id
        assert mask.sum() >= 12
        assert connected_components(mask, connectivity=1).max() == 1, f"object {object_id} is in pieces"
    # objects are brighter than the background they sit on
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()


def test_dense_style_has_touching_objects_and_sparse_style_mostly_not():
    dense = synthetic_image((256, 256), seed=5, style="dense_nuclei").labels
    sparse = synthetic_image((256, 256), seed=5, style="small_nuclei").labels
    assert _fraction_touching(dense) > 0.4
    assert _fraction_touching(dense) > 2 * _fraction_touching(sparse)


def test_styles_control_size_and_density():
    small = synthetic_image((256, 256), seed=1, style="small_nuclei").labels
    cells = synthetic_image((256, 256), seed=1, style="cells").labels
    small_area = np.bincount(small.ravel())[1:].mean()
    cells_area = np.bincount(cells.ravel())[1:].mean()
    assert cells_area > 8 * small_area
    assert small.max() > 3 * cells.max()


def test_uint16_output_and_noise():
    sample = synthetic_image((128, 128), seed=2, dtype=np.uint16)
    assert sample.image.dtype == np.uint16
    background = sample.image[sample.labels == 0].astype(float)
    assert background.std() > 0  # Poisson + read noise
    float_version = synthetic_image((128, 128), seed=2)
    np.testing.assert_array_equal(sample.labels, float_version.labels)


def test_large_image_has_hundreds_of_objects():
    sample = synthetic_image((1024, 1024), seed=0)
    assert sample.labels.max() > 200


def test_volume_has_ellipsoid_instances():
    sample = synthetic_volume((24, 96, 96), seed=7, z_spacing=2.0)
    assert sample.image.shape == sample.labels.shape == (24, 96, 96)
    ids = np.unique(sample.labels)
    np.testing.assert_array_equal(ids, np.arange(ids.max() + 1))
    assert ids.max() >= 3
    for object_id in ids[1:]:
        mask = sample.labels == object_id
        assert connected_components(mask, connectivity=1).max() == 1
        # an object spans several slices (it is a 3D body, not a stack of unrelated discs)
        assert np.count_nonzero(mask.any(axis=(1, 2))) >= 2
    again = synthetic_volume((24, 96, 96), seed=7, z_spacing=2.0)
    np.testing.assert_array_equal(sample.image, again.image)


def test_dataset_is_lazy_deterministic_and_varies_style():
    dataset = SyntheticDataset(5, shape=(64, 64), seed=100, vary_style=True)
    assert len(dataset) == 5
    np.testing.assert_array_equal(dataset[2].labels, SyntheticDataset(5, (64, 64), 100, vary_style=True)[2].labels)
    assert dataset.style_of(0) != dataset.style_of(1)
    listed = synthetic_dataset(2, shape=(64, 64), seed=100, vary_style=True)
    np.testing.assert_array_equal(listed[1].image, dataset[1].image)
    with pytest.raises(IndexError):
        dataset[5]
    style = random_style(np.random.default_rng(0))
    assert style.radius_range[0] < style.radius_range[1]


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError, match="3D"):
        synthetic_image((4, 64, 64))
    with pytest.raises(InputError, match="Unknown synthetic style"):
        synthetic_image((64, 64), style="nope")
    with pytest.raises(InputError, match="dtype"):
        synthetic_image((64, 64), dtype=np.int8)
