"""Stack embeddings on disk (cancel, resume, refusal), segment_volume's zarr output (interrupted,
resumed, not overwritten), and the linking rule (splits, merges, gaps, minimum extent)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine import (
    InputError,
    StackEmbeddings,
    propagate_object,
    segment_volume,
    segment_volume_steps,
)
from napari_sam.engine.automatic.params import AutomaticParams
from napari_sam.engine.datasets.synthetic_volume import synthetic_stack
from napari_sam.engine.io.outputs import read_output_info
from napari_sam.engine.metrics import f1_score
from napari_sam.engine.volume.linking import PlaneLinker, extent_filter
from napari_sam.engine.volume.volumes import volume_view

FAST = AutomaticParams(points_per_side=8, pred_iou_thresh=0.5, nested_thresh=0.8)


@pytest.fixture(scope="module")
def predictor(trained_model_path):
    import torch

    from napari_sam.engine import Predictor
    from napari_sam.model import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Predictor(load_model(trained_model_path, device="cpu"), device="cpu", precision="fp32")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stack():
    return synthetic_stack((6, 128, 128), seed=3, dtype=np.uint16)


def test_stack_embeddings_are_cached_on_disk_cancelled_and_resumed(predictor, stack, tmp_path):
    view = volume_view(stack.image)
    store = tmp_path / "embeddings.zarr"
    first = StackEmbeddings(predictor, view, path=store)
    steps = first.embed_steps()
    assert [next(steps), next(steps)] == [(1, 6), (2, 6)]
    steps.close()  # cancelled after two planes: they stay on disk
    again = StackEmbeddings(predictor, volume_view(stack.image), path=store)
    assert again.missing() == [2, 3, 4, 5]
    progress = list(again.embed_steps())
    assert progress == [(3, 6), (4, 6), (5, 6), (6, 6)] and again.computed == 4  # only the rest
    fresh = predictor.compute_embedding(stack.image[1], view.intensity_range)
    np.testing.assert_allclose(again.get(1).features.numpy(), fresh.features.numpy(), rtol=1e-5, atol=1e-5)
    assert again.computed == 4  # read back, not recomputed
    third = StackEmbeddings(predictor, stack.image, path=store)  # a volume is seen along axis 0
    assert third.missing() == [] and list(third.embed_steps()) == [] and third.computed == 0
    # a propagation given the store's path encodes nothing
    seed = stack.labels[2] == np.bincount(stack.labels[2][stack.labels[2] > 0]).argmax()
    result = propagate_object(predictor, stack.image, 2, seed_mask=seed, cache=str(store))
    assert result.extras["embeddings"].computed == 0 and len(result.planes) >= 1
    other = stack.image.copy()
    other[0, 0, 0] += 1
    with pytest.raises(InputError, match="computed for another image or model"):
        StackEmbeddings(predictor, volume_view(other), path=store)


def test_segment_volume_writes_zarr_resumes_and_never_overwrites(predictor, stack, tmp_path):
    embeddings = StackEmbeddings(predictor, volume_view(stack.image))
    list(embeddings.embed_steps())
    whole = segment_volume(predictor, stack.image, params=FAST, cache=embeddings)
    assert whole.shape == stack.labels.shape and whole.max() > 0
    assert embeddings.computed == 6  # the planes' cached embeddings served the automatic masks
    out = tmp_path / "labels.zarr"
    steps = segment_volume_steps(predictor, stack.image, out=str(out), params=FAST)
    assert [next(steps) for _ in range(3)] == [(1, 6), (2, 6), (3, 6)]
    steps.close()  # interrupted after three planes
    info = read_output_info(out)
    assert info["complete"] is False and info["planes_done"] == 3
    with pytest.raises(InputError, match="exists"):
        segment_volume(predictor, stack.image, out=str(out), params=FAST)
    with pytest.raises(InputError, match="other settings"):
        segment_volume(predictor, stack.image, out=str(out), params=FAST, min_iou=0.6, resume=True)
    done = []
    resumed = segment_volume(predictor, stack.image, out=str(out), params=FAST, resume=True,
                             progress=lambda d, t: done.append(d))
    assert done == [4, 5, 6]  # only the planes not finished before
    np.testing.assert_array_equal(np.asarray(resumed), whole)
    assert read_output_info(out)["complete"] is True


def test_planes_larger_than_one_model_input_are_tiled_with_one_intensity_range(predictor):
    big = synthetic_stack((3, 300, 300), seed=5, dtype=np.uint16)
    labels = segment_volume(predictor, big.image, params=FAST, halo=32)
    assert labels.shape == big.labels.shape
    assert f1_score(big.labels, labels) > 0.3
    # a plane dimmed to a tenth: one range for the volume keeps it dim (per-plane scaling would not)
    dimmed = big.image.copy()
    dimmed[1] = dimmed[1] // 10
    weak = segment_volume(predictor, dimmed, params=FAST, halo=32, intensity_range=(100, 2000))
    assert (weak[1] > 0).sum() < 0.5 * (labels[1] > 0).sum()


def test_segment_volume_bad_input(predictor, stack):
    with pytest.raises(InputError, match="2D image"):
        segment_volume(predictor, stack.image[0], params=FAST)
    with pytest.raises(InputError, match="does not exist"):
        segment_volume(predictor, stack.image, axis=3, params=FAST)
    broken = stack.image.astype(np.float32)
    broken[4, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        segment_volume(predictor, broken, params=FAST, intensity_range=(0, 500))
    with pytest.raises(InputError, match="min_extent"):
        segment_volume(predictor, stack.image, params=FAST, min_extent=-1)


def _disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_linking_splits_merges_gaps_and_minimum_extent():
    shape = (40, 60)
    linker = PlaneLinker(min_iou=0.3, max_gap=1)
    a = _disk(shape, (20, 20), 8)
    first = linker.link(0, a.astype(int) * 7)
    assert set(np.unique(first)) == {0, 1}
    # a split: one piece continues (the larger overlap), the other starts a new object
    split = np.zeros(shape, int)
    split[_disk(shape, (20, 18), 8)] = 1
    split[_disk(shape, (20, 45), 5)] = 2
    second = linker.link(1, split)
    assert second[20, 18] == 1 and second[20, 45] == 2
    # missing on plane 2, back on plane 3: the same id (one-plane gap)
    linker.link(2, np.zeros(shape, int))
    fourth = linker.link(3, _disk(shape, (20, 19), 8).astype(int))
    assert fourth[20, 19] == 1
    # a merge: the object below continues the one it overlaps more; id 2 ends
    merged = linker.link(4, (_disk(shape, (20, 19), 8) | _disk(shape, (20, 45), 5)).astype(int))
    assert set(np.unique(merged)) == {0, 1}
    # gone for two planes: a later object there is new
    linker.link(5, np.zeros(shape, int))
    linker.link(6, np.zeros(shape, int))
    assert linker.link(7, a.astype(int))[20, 20] == 3
    # minimum extent in physical units: 2 planes x 2.5 um = 5 um
    first_plane, last_plane = {1: 0, 2: 1, 3: 7}, {1: 4, 2: 1, 3: 8}
    assert extent_filter(first_plane, last_plane, step=2.5, min_extent=5.0) == {2}
    assert extent_filter(first_plane, last_plane, step=1.0, min_extent=5.0) == {2, 3}


def test_large_planes_of_a_model_with_an_instance_decoder_still_use_prompts(predictor, monkeypatch):
    """Planes that fit one input use prompts; tiled ones must too, even when the model has a decoder."""
    from napari_sam.engine.automatic import segment as automatic

    methods = []
    steps = automatic.segment_everything_steps

    def recording(*args, **kwargs):
        methods.append(kwargs.get("method"))
        return steps(*args, **kwargs)

    monkeypatch.setattr(automatic, "segment_everything_steps", recording)
    big = synthetic_stack((2, 300, 300), seed=5, dtype=np.uint16)
    segment_volume(predictor, big.image, params=FAST, halo=32)
    assert methods == ["amg", "amg"]
