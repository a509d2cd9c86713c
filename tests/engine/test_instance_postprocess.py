"""Instance mode post-processing: decoder maps -> instances by a seeded watershed; settings; one window end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sam.engine.automatic.instance import (
    InstanceParams,
    decoder_maps,
    instances_from_maps,
    segment_instances,
)
from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.predictor import Predictor
from napari_sam.model import InstanceDecoderConfig, build_sam
from napari_sam.model.config import TINY_VIT


def _touching_disks(shape=(120, 160)) -> np.ndarray:
    """Ground truth: disks of several sizes, two pairs touching (a watershed must split them)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    disks = [(30, 30, 14), (30, 57, 13), (80, 40, 18), (85, 110, 20), (50, 115, 12), (100, 145, 4)]
    for index, (r, c, radius) in enumerate(disks, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


def _target_maps(labels: np.ndarray) -> np.ndarray:
    """Maps a good decoder predicts: foreground, normalised centre distance, normalised inverted boundary
    distance (0 deep inside, 1 at the boundary), per object; the distances are 1 (far) on the background."""
    maps = np.ones((3, *labels.shape), dtype=np.float32)
    maps[0] = labels > 0
    rows, cols = np.indices(labels.shape)
    for index in range(1, labels.max() + 1):
        mask = labels == index
        inner = ndimage.distance_transform_edt(mask)
        centre = np.unravel_index(np.argmax(inner), inner.shape)
        to_centre = np.hypot(rows - centre[0], cols - centre[1])
        maps[1][mask] = to_centre[mask] / to_centre[mask].max()
        maps[2][mask] = (inner.max() - inner[mask]) / inner.max()
    return maps


def _matched_ious(expected: np.ndarray, found: np.ndarray) -> list[float]:
    """For every expected instance, the IoU of the instance of ``found`` that overlaps it most."""
    ious = []
    for index in np.unique(expected[expected > 0]):
        mask = expected == index
        ids, counts = np.unique(found[mask], return_counts=True)
        best = ids[np.argmax(counts)]
        ious.append(0.0 if best == 0 else float(np.sum(mask & (found == best)) / np.sum(mask | (found == best))))
    return ious


def test_perfect_maps_give_the_objects_back_touching_ones_split():
    truth = _touching_disks()
    labels = instances_from_maps(_target_maps(truth))
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert labels.max() == truth.max()  # one instance per object: the touching pairs are split
    assert sorted(np.unique(labels)) == list(range(truth.max() + 1))  # ids 1..n without gaps
    assert min(_matched_ious(truth, labels)) > 0.9
    assert np.mean(labels[truth == 0] > 0) < 0.01  # the smoothed foreground may spill a pixel over the edge


def test_noisy_maps_still_give_one_instance_per_object():
    truth = _touching_disks()
    rng = np.random.default_rng(0)
    maps = np.clip(_target_maps(truth) + rng.normal(0, 0.15, size=(3, *truth.shape)), 0, 1).astype(np.float32)
    labels = instances_from_maps(maps)
    assert labels.max() == truth.max()
    assert min(_matched_ious(truth, labels)) > 0.85
    # without smoothing the noise breaks seeds and foreground apart: the defaults' smoothing matters
    rough = instances_from_maps(maps, InstanceParams(foreground_smoothing=0, distance_smoothing=0))
    assert rough.max() > truth.max()


def test_min_size_removes_small_objects_and_renumbers():
    truth = _touching_disks()
    labels = instances_from_maps(_target_maps(truth), InstanceParams(min_size=100))
    # the 4-pixel-radius disk (about 50 pixels) is gone, the rest keep ids 1..n-1
    assert labels.max() == truth.max() - 1
    assert sorted(np.unique(labels)) == list(range(truth.max()))
    assert np.all(labels[truth == 6] == 0)


def test_thresholds_move_the_foreground_and_the_seeds():
    truth = _touching_disks()
    maps = _target_maps(truth)
    maps[0] = ndimage.gaussian_filter(maps[0], 2.0)  # a soft foreground edge
    strict = instances_from_maps(maps, InstanceParams(foreground_threshold=0.9))
    loose = instances_from_maps(maps, InstanceParams(foreground_threshold=0.1))
    assert (strict > 0).sum() < (truth > 0).sum() < (loose > 0).sum()
    # no seed anywhere: nothing is segmented
    none = instances_from_maps(maps, InstanceParams(center_distance_threshold=0.0))
    assert not none.any()
    empty = instances_from_maps(np.zeros((3, 20, 30), np.float32))
    assert empty.shape == (20, 30) and not empty.any()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"foreground_threshold": 1.5}, "foreground_threshold must lie in [0, 1]"),
        ({"center_distance_threshold": -0.1}, "center_distance_threshold must lie in [0, 1]"),
        ({"boundary_distance_threshold": float("nan")}, "boundary_distance_threshold must lie in [0, 1]"),
        ({"foreground_threshold": "0.5"}, "foreground_threshold must lie in [0, 1]"),
        ({"foreground_smoothing": -1.0}, "foreground_smoothing must be a Gaussian sigma >= 0"),
        ({"distance_smoothing": float("inf")}, "distance_smoothing must be a Gaussian sigma >= 0"),
        ({"min_size": -3}, "min_size must be a whole number of pixels >= 0"),
        ({"min_size": 2.5}, "min_size must be a whole number of pixels >= 0"),
        ({"min_size": True}, "min_size must be a whole number of pixels >= 0"),
    ],
)
def test_bad_settings_are_input_errors_naming_the_setting(change, words):
    params = replace(InstanceParams(), **change)
    with pytest.raises(InputError) as caught:
        params.validate()
    assert words in str(caught.value)
    with pytest.raises(InputError):
        instances_from_maps(np.zeros((3, 8, 8), np.float32), params)


@pytest.mark.parametrize(
    "maps, words",
    [
        (np.zeros((8, 8), np.float32), "(3, H, W)"),
        (np.zeros((2, 8, 8), np.float32), "(3, H, W)"),
        (np.zeros((3, 0, 8), np.float32), "(3, H, W)"),
        (np.full((3, 8, 8), np.nan, np.float32), "finite"),
    ],
)
def test_bad_maps_are_input_errors(maps, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        instances_from_maps(maps)


@pytest.fixture(scope="module")
def decoder_predictor():
    torch.manual_seed(0)
    model = build_sam(replace(TINY_VIT, instance_decoder=InstanceDecoderConfig(embed_dim=32, initial_features=8)))
    return Predictor(model, device="cpu")


def test_segment_instances_runs_the_decoder_on_one_window(decoder_predictor):
    image = (np.random.default_rng(1).random((90, 130)) * 255).astype(np.uint8)
    embedding = decoder_predictor.compute_embedding(image)
    maps = decoder_maps(decoder_predictor, embedding)
    assert maps.shape == (3, 90, 130) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    params = InstanceParams(foreground_threshold=float(np.median(maps[0])))  # a random decoder: mid threshold
    labels = segment_instances(decoder_predictor, image, params)
    assert labels.shape == (90, 130) and labels.dtype == np.int32 and labels.max() > 0
    np.testing.assert_array_equal(labels, instances_from_maps(maps, params))
    # a precomputed embedding gives the same result without the pixels
    np.testing.assert_array_equal(segment_instances(decoder_predictor, None, params, embedding=embedding), labels)


def test_bf16_decoder_maps_stay_smooth_and_close_to_fp32(decoder_predictor):
    # the model input size: the maps are the decoder output itself, no resizing mixes values between pixels
    image = (np.random.default_rng(2).random((256, 256)) * 255).astype(np.uint8)
    embedding = decoder_predictor.compute_embedding(image)
    fp32 = decoder_maps(Predictor(decoder_predictor.model, device="cpu", precision="fp32"), embedding)
    bf16 = decoder_maps(Predictor(decoder_predictor.model, device="cpu", precision="bf16"), embedding)
    assert bf16.dtype == np.float32
    # bf16 outputs would take at most a few hundred distinct values in [0, 1]: the fp32 output layer keeps them smooth
    assert len(np.unique(bf16[2])) > 0.5 * len(np.unique(fp32[2])) > 1000
    np.testing.assert_allclose(bf16, fp32, atol=0.03)


def test_segment_instances_blank_window_and_models_without_decoder(decoder_predictor, tiny_model):
    blank = segment_instances(decoder_predictor, np.full((40, 50), 7, np.uint16))
    assert blank.shape == (40, 50) and blank.dtype == np.int32 and not blank.any()
    with pytest.raises(InputError, match="Give the window's pixels or its embedding"):
        segment_instances(decoder_predictor, None)
    with pytest.raises(InputError, match="instance decoder.*'amg'"):
        segment_instances(Predictor(tiny_model, device="cpu"), np.zeros((40, 50), np.uint8) + np.eye(40, 50, dtype=np.uint8))
    with pytest.raises(InputError, match="foreground_threshold"):
        segment_instances(decoder_predictor, np.eye(40, 50), InstanceParams(foreground_threshold=2))


# ----------------------------------------------------------------------------- micro-sam's post-processing (golden)

GOLDEN_DIR = Path(__file__).parents[1] / "data" / "golden"
POSTPROCESS = json.loads((GOLDEN_DIR / "instance_postprocess.json").read_text())


@pytest.mark.parametrize("index", range(len(POSTPROCESS["settings"])))
def test_instances_match_micro_sams_for_the_same_maps(index):
    with np.load(GOLDEN_DIR / "instance_postprocess.npz") as golden:
        maps = golden["maps_uint16"].astype(np.float32) / np.float32(65535)
        expected = golden[f"labels{index}"].astype(np.int32)
    params = InstanceParams(**POSTPROCESS["settings"][index])
    labels = instances_from_maps(maps, params)
    assert expected.max() >= 10  # many objects in the golden: the comparison is not trivial
    assert labels.max() == expected.max()
    assert sorted(np.unique(labels)) == list(range(labels.max() + 1))
    ious = _matched_ious(expected, labels)
    assert min(ious) >= 0.99, sorted(ious)[:5]
    assert min(_matched_ious(labels, expected)) >= 0.99  # and the other way round: nothing extra
