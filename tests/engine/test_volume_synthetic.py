"""The synthetic z-stacks and time series the volume tests and benchmarks use."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine import InputError
from napari_sam.engine.datasets.synthetic_volume import synthetic_movie, synthetic_stack


def test_stack_objects_span_many_planes_and_anisotropy_shortens_them():
    fine = synthetic_stack((24, 96, 96), seed=4, z_spacing=1.0)
    coarse = synthetic_stack((24, 96, 96), seed=4, z_spacing=2.0)
    assert fine.image.shape == fine.labels.shape == (24, 96, 96) and fine.image.dtype == np.float32

    def spans(labels):
        return np.array([np.flatnonzero((labels == i).any(axis=(1, 2))).size for i in range(1, labels.max() + 1)])

    assert np.median(spans(coarse.labels)) >= 6  # many planes even with z twice as coarse
    assert np.median(spans(fine.labels)) > 1.5 * np.median(spans(coarse.labels))
    again = synthetic_stack((24, 96, 96), seed=4, z_spacing=2.0)
    np.testing.assert_array_equal(again.image, coarse.image)


def test_movie_objects_keep_their_id_move_and_change_shape():
    movie = synthetic_movie((10, 128, 128), seed=2, speed=3.0, shape_change=0.3, dtype=np.uint16)
    assert movie.image.dtype == np.uint16 and movie.labels.shape == (10, 128, 128)
    ids = [set(np.unique(frame)) - {0} for frame in movie.labels]
    inside = set.intersection(*ids)
    assert len(inside) >= 2  # objects present in every frame, under one id
    for i in inside:
        centres = np.array([np.argwhere(frame == i).mean(axis=0) for frame in movie.labels])
        areas = np.array([(frame == i).sum() for frame in movie.labels])
        assert np.linalg.norm(centres[-1] - centres[0]) > 10  # it moved
        assert areas.max() > 1.1 * areas.min()  # and changed size
    still = synthetic_movie((10, 128, 128), seed=2, speed=0.0, shape_change=0.0)
    np.testing.assert_array_equal(still.labels[0], still.labels[-1])


def test_bad_generator_arguments():
    with pytest.raises(InputError, match="Z, H, W"):
        synthetic_stack((64, 64))
    with pytest.raises(InputError, match="z_spacing"):
        synthetic_stack((4, 64, 64), z_spacing=0)
    with pytest.raises(InputError, match="speed"):
        synthetic_movie((4, 64, 64), speed=-1)
