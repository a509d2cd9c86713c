"""propagate_object / iter_propagation: the contract, corrections, z_range, lazy volumes, bad input.

Quality on the held-out synthetic set is in test_volume_quality.py; these tests use one small
synthetic stack and the trained tiny model, one thread (the machine is shared).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine import (
    InputError,
    PlaneResult,
    PropagationResult,
    iter_propagation,
    propagate_object,
)
from napari_sam.engine.datasets.synthetic_volume import synthetic_stack
from napari_sam.engine.metrics import mask_iou
from napari_sam.engine.volume.recipe import bounding_box


@pytest.fixture(scope="module")
def stack():
    return synthetic_stack((24, 128, 128), seed=7)


@pytest.fixture
def predictor(trained_model):
    import torch

    from napari_sam.engine import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared by many jobs: one thread is several times faster here
    yield Predictor(trained_model, device="cpu", precision="fp32")
    torch.set_num_threads(threads)


def _inner_object(labels):
    """An object that ends inside the volume on both sides, with its planes and middle plane."""
    best = None
    for i in range(1, labels.max() + 1):
        planes = np.flatnonzero((labels == i).any(axis=(1, 2)))
        if planes[0] > 0 and planes[-1] < labels.shape[0] - 1 and (best is None or planes.size > best[1].size):
            best = (i, planes)
    i, planes = best
    return labels == i, planes, int((planes[0] + planes[-1]) // 2)


def test_box_on_the_middle_plane_follows_the_object_both_ways(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)
    steps = iter_propagation(predictor, stack.image, middle, box=bounding_box(truth[middle]))
    seen = []
    while True:
        try:
            item = next(steps)
        except StopIteration as stop:
            result = stop.value
            break
        assert isinstance(item, PlaneResult)
        seen.append(item.plane)
    assert seen[0] == middle  # the seed plane first
    assert isinstance(result, PropagationResult)
    assert result.mask.shape == stack.labels.shape and result.mask.dtype == bool
    assert result.scores.shape == (stack.labels.shape[0],)
    assert result.planes.min() < middle < result.planes.max()  # both ways
    assert np.isnan(result.scores[[0, -1]]).all()  # absent where the object is
    assert not result.mask[~np.isfinite(result.scores)].any()
    assert mask_iou(result.mask, truth) > 0.6
    again = propagate_object(predictor, stack.image, middle, box=bounding_box(truth[middle]))
    np.testing.assert_array_equal(again.mask, result.mask)


def test_one_direction_and_z_range_bound_the_result(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)
    box = bounding_box(truth[middle])
    up = propagate_object(predictor, stack.image, middle, box=box, direction="forward")
    assert up.planes.min() == middle and up.planes.max() > middle
    ranged = propagate_object(predictor, stack.image, middle, box=box, z_range=(middle - 1, middle + 1))
    assert set(ranged.planes) <= {middle - 1, middle, middle + 1}
    assert not ranged.mask[: middle - 1].any() and not ranged.mask[middle + 2 :].any()


def test_seed_mask_and_other_axis(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)
    result = propagate_object(predictor, stack.image, middle, seed_mask=truth[middle], intensity_range=(0, 1.5))
    np.testing.assert_array_equal(result.mask[middle], truth[middle])
    assert result.scores[middle] == 1.0 and len(result.planes) > 3
    # the same volume with Z moved to the last axis, propagated along axis 2
    moved = np.moveaxis(stack.image, 0, 2)
    along_x = propagate_object(predictor, moved, middle, seed_mask=truth[middle], axis=2, intensity_range=(0, 1.5))
    np.testing.assert_array_equal(np.moveaxis(along_x.mask, 2, 0), result.mask)


def test_lazy_volume_is_read_one_plane_at_a_time(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)

    class Planes:
        """A volume that records what is read; reading more than one plane at once fails the test."""

        def __init__(self, data):
            self.data, self.shape, self.dtype, self.ndim, self.reads = data, data.shape, data.dtype, data.ndim, []

        def __getitem__(self, key):
            key = key if isinstance(key, tuple) else (key,)
            plane = key[0]
            assert isinstance(plane, (int, np.integer)), f"read more than one plane: {key}"
            self.reads.append(int(plane))
            return self.data[key]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole volume was read")

    lazy = Planes(stack.image)
    result = propagate_object(predictor, lazy, middle, box=bounding_box(truth[middle]), intensity_range=(0.0, 1.5))
    eager = propagate_object(predictor, stack.image, middle, box=bounding_box(truth[middle]),
                             intensity_range=(0.0, 1.5))
    np.testing.assert_array_equal(result.mask, eager.mask)
    assert len(set(lazy.reads)) == len(lazy.reads)  # every plane read once


def test_cancel_by_closing_the_generator(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)
    steps = iter_propagation(predictor, stack.image, middle, box=bounding_box(truth[middle]))
    first = next(steps)
    steps.close()
    assert first.plane == middle and first.mask.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed_plane": 24, "box": [10, 10, 30, 30]}, "out of range"),
        ({"seed_plane": -1, "box": [10, 10, 30, 30]}, "out of range"),
        ({"seed_plane": 5, "seed_mask": np.zeros((128, 128), bool)}, "seed mask is empty"),
        ({"seed_plane": 5, "seed_mask": np.ones((50, 50), bool)}, "seed_mask has shape"),
        ({"seed_plane": 5, "box": [10, 10, 30, 30], "axis": 3}, "axis 3 does not exist"),
        ({"seed_plane": 5, "box": [10, 10, 30, 30], "axis": -4}, "does not exist"),
        ({"seed_plane": 5}, "Give the object on the seed plane"),
        ({"seed_plane": 5, "box": [10, 10, 30, 30], "direction": "up"}, "direction must be"),
        ({"seed_plane": 5, "box": [10, 10, 30, 30], "z_range": (6, 9)}, "outside z_range"),
        ({"seed_plane": 5, "box": [10, 10, 30, 30], "min_overlap": 2.0}, "min_overlap"),
        ({"seed_plane": 5, "box": [10, 10, 30, 30], "colour": 1}, "Unknown propagation option"),
    ],
)
def test_bad_arguments_are_input_errors(stack, predictor, kwargs, message):
    kwargs = dict(kwargs)
    seed = kwargs.pop("seed_plane")
    with pytest.raises(InputError, match=message):
        propagate_object(predictor, stack.image, seed, **kwargs)


def test_a_2d_image_is_not_a_volume(stack, predictor):
    with pytest.raises(InputError, match="got a 2D image"):
        propagate_object(predictor, stack.image[0], 0, box=[10, 10, 30, 30])
    with pytest.raises(InputError, match="got a 2D image"):
        propagate_object(predictor, np.zeros((64, 64, 3), np.uint8), 0, box=[10, 10, 30, 30])


def test_nan_in_the_volume_is_an_input_error(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)
    sampled = stack.image.copy()
    sampled[stack.image.shape[0] // 2, 3, 3] = np.nan  # a plane the intensity sample reads
    with pytest.raises(InputError, match="NaN"):
        propagate_object(predictor, sampled, middle, box=bounding_box(truth[middle]))
    later = stack.image.copy()
    later[middle + 1, 40, 40] = np.nan  # only met when propagation reaches it
    with pytest.raises(InputError, match=f"Plane {middle + 1} along axis 0 contains NaN"):
        propagate_object(predictor, later, middle, box=bounding_box(truth[middle]), intensity_range=(0, 1.5))


def test_an_object_lost_on_one_plane_is_bridged(stack, predictor):
    truth, planes, middle = _inner_object(stack.labels)
    lost = middle + 2
    image = stack.image.copy()
    background = float(np.median(image[lost][stack.labels[lost] == 0]))
    image[lost][truth[lost]] = background  # the object vanishes on one plane (a thin part, a bad plane)
    box = bounding_box(truth[middle])
    bridged = propagate_object(predictor, image, middle, box=box, direction="forward", intensity_range=(0, 1.5))
    assert bridged.planes.max() > lost  # found again past the gap
    assert np.isfinite(bridged.scores[lost]) and bridged.mask[lost].any()  # the gap filled from its neighbours
    assert (bridged.mask[lost] <= (bridged.mask[lost - 1] & bridged.mask[lost + 1])).all()
    strict = propagate_object(predictor, image, middle, box=box, direction="forward", intensity_range=(0, 1.5),
                              max_gap=0)
    assert strict.planes.max() == lost - 1  # without grace it stops there


def test_channels_dask_and_uint16_volumes(stack, predictor):
    import dask.array as da

    truth, planes, middle = _inner_object(stack.labels)
    span = (middle, middle + 3)
    reference = propagate_object(predictor, stack.image, middle, seed_mask=truth[middle], z_range=span,
                                 intensity_range=(0, 1.5))
    lazy = da.from_array(stack.image, chunks=(1, 64, 64))
    from_dask = propagate_object(predictor, lazy, middle, seed_mask=truth[middle], z_range=span,
                                 intensity_range=(0, 1.5))
    np.testing.assert_array_equal(from_dask.mask, reference.mask)
    # two channels last are read as (c0, c1, 0) (engine.predict.preprocessing), plane by plane: the same result
    # as that RGB volume. (How far it gets is the model's business: the nuclei-trained fixture v2 loses the object
    # after the seed plane in this yellow rendering; v1 followed it at IoU 0.55.)
    two_channels = np.stack([stack.image, 0.5 * stack.image], axis=-1)  # (Z, Y, X, 2)
    result = propagate_object(predictor, two_channels, middle, seed_mask=truth[middle], z_range=span)
    as_rgb = np.stack([stack.image, 0.5 * stack.image, np.zeros_like(stack.image)], axis=-1)
    rgb_result = propagate_object(predictor, as_rgb, middle, seed_mask=truth[middle], z_range=span)
    assert result.mask.shape == stack.labels.shape and middle in result.planes
    np.testing.assert_array_equal(result.mask, rgb_result.mask)
    counts = np.clip(stack.image * 1000, 0, 65535).astype(np.uint16)
    as_uint16 = propagate_object(predictor, counts, middle, seed_mask=truth[middle], z_range=span)
    assert mask_iou(as_uint16.mask, reference.mask) > 0.8


def test_propagation_stops_where_the_object_ends_and_does_not_jump_to_its_neighbour(trained_model_v1_path):
    """The stopping rules, with fixture v1: on repeated planes v2's answer to its own mask grows 5-10% a plane
    (an object touching its neighbour then trips the growth rule after one plane), a weakness of v2's mask
    decoder that the recipe does not hide: asking again with a box on rejected planes reached the object's
    end but still grew 1.4-1.7x over four planes."""
    from scipy import ndimage

    from napari_sam.engine import Predictor, StackEmbeddings
    from napari_sam.model import load_model

    predictor = Predictor(load_model(trained_model_v1_path, device="cpu"), device="cpu", precision="fp32")
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.engine.volume.volumes import volume_view

    sample = synthetic_image((256, 256), seed=0)
    labels = sample.labels
    volume = np.repeat(sample.image[None], 16, axis=0)
    background = float(np.median(sample.image[labels == 0]))
    touching = []
    for a in range(1, labels.max() + 1):
        ring = ndimage.binary_dilation(labels == a, iterations=2) & (labels != a) & (labels > 0)
        if ring.sum() > 10:
            touching.append((a, int(np.bincount(labels[ring]).argmax())))
    ends = touching[:3]
    for a, _ in ends:
        volume[8:, labels == a] = background  # a ends after plane 7; its neighbour b goes on to plane 15
    embeddings = StackEmbeddings(predictor, volume_view(volume, intensity_range=(0, 1.5)))
    for a, b in ends:
        result = propagate_object(predictor, volume, 4, box=bounding_box(labels == a), cache=embeddings)
        assert result.planes.min() == 0 and result.planes.max() == 7, (a, result.planes)
        assert not result.mask[8:].any()  # no jump to the neighbour that continues
        areas = result.mask.sum(axis=(1, 2))[:8]
        assert areas.max() <= 1.3 * areas[4]  # no growth toward the end


def test_cached_stack_embeddings_bring_their_intensity_range(stack, predictor):
    from napari_sam.engine import StackEmbeddings
    from napari_sam.engine.volume.volumes import volume_view

    truth, planes, middle = _inner_object(stack.labels)
    embeddings = StackEmbeddings(predictor, volume_view(stack.image, intensity_range=(0, 1.5)))
    result = propagate_object(predictor, stack.image, middle, seed_mask=truth[middle], z_range=(middle, middle + 1),
                              cache=embeddings)
    assert result.extras["embeddings"] is embeddings and embeddings.computed == 2
    with pytest.raises(InputError, match="intensity range"):
        propagate_object(predictor, stack.image, middle, seed_mask=truth[middle], cache=embeddings,
                         intensity_range=(0, 3.0))


def test_propagate_object_keeps_the_signature_issue_10_spells_out():
    import inspect

    from napari_sam.engine import propagate_object

    params = inspect.signature(propagate_object).parameters
    assert list(params)[:3] == ["predictor", "volume", "seed_plane"]
    expected = dict(points=None, labels=None, box=None, seed_mask=None, axis=0, direction="both", z_range=None)
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default, name
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
