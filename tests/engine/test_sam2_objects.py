"""Several objects propagated together with SAM 2's memory, and a seed mask through the memory.

Oracle: ``tools/make_golden_sam2.py`` ran Meta's ``SAM2VideoPredictor`` (tiny config, the memory
weights of ``sam2_tiny_sam2_test``) on the six-frame synthetic movie with three objects in one
inference state, each prompted on its own frame (a click on frame 1, a box on frame 3, a mask on
frame 2 through ``add_new_mask``), forward then backward (``objects`` in the golden); and the
mask object alone (``mask_alone``). Ours must match per frame and object: mask IoU >= 0.99 and the
same occlusion decisions.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from napari_sam.engine.errors import InputError
from napari_sam.model.sam2 import build_sam2

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "sam2_tiny_sam2_test"
_spec = importlib.util.spec_from_file_location("_sam2_objects_weights", Path(__file__).parents[1] / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)
_tool_spec = importlib.util.spec_from_file_location(
    "_golden_sam2_objects_tool", Path(__file__).parents[2] / "tools" / "make_golden_sam2.py"
)
TOOL = importlib.util.module_from_spec(_tool_spec)
_tool_spec.loader.exec_module(TOOL)


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    with np.load(GOLDEN.with_suffix(".npz")) as data:
        arrays = {key: data[key] for key in data.files if key.startswith(("objects/", "mask_alone/"))}
    return meta, arrays


@pytest.fixture(scope="module")
def predictor(golden):
    from napari_sam.engine import Predictor

    meta, _ = golden
    model = W.load_deterministic_weights(build_sam2("tiny_sam2_test"), meta["memory"]["weight_seed"])
    return Predictor(model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def frames(golden):
    meta, _ = golden
    frames = TOOL.video_frames()
    assert W.array_digest(frames) == meta["video"]["frames_digest"], "the frames no longer regenerate bit-identically"
    return frames


def _our_prompts(objects: list[dict], frame_shape) -> list[dict]:
    """The golden's prompts ((x, y) pixels, box [x0, y0, x1, y1], an ellipse) as napari (row, col) prompts."""
    prompts = []
    for obj in objects:
        prompt = {"plane": obj["frame"]}
        if "points" in obj:
            prompt["points"] = [[y, x] for x, y in obj["points"]]
            prompt["labels"] = obj["labels"]
        if "box" in obj:
            x0, y0, x1, y1 = obj["box"]
            prompt["box"] = [y0, x0, y1, x1]
        if "mask_ellipse" in obj:
            prompt["mask"] = TOOL.ellipse_mask(tuple(frame_shape), **obj["mask_ellipse"])
        prompts.append(prompt)
    return prompts


def _compare(results, meta_run: dict, arrays: dict, prefix: str) -> list[float]:
    """Per-frame IoU against Meta's last output for each frame and object (backward after forward)."""
    shape = tuple(meta_run["frame_shape"])
    last_pass = {}
    for pass_name in ("forward", "backward"):
        for frame in meta_run["passes"][pass_name]:
            last_pass[frame] = pass_name
    ious = []
    for index, result in enumerate(results):
        for frame, pass_name in sorted(last_pass.items()):
            key = f"{prefix}/{pass_name}/{frame}/{index}"
            expected = np.unpackbits(arrays[f"{key}/mask_packed"], count=shape[0] * shape[1]).reshape(shape) > 0
            ours = result.plane_mask(frame)
            union = np.logical_or(ours, expected).sum()
            iou = 1.0 if union == 0 else np.logical_and(ours, expected).sum() / union
            assert iou >= 0.99, f"object {index}, {pass_name} frame {frame}: IoU {iou:.4f}"
            present = arrays[f"{key}/object_score_logits"][0, 0] > 0
            assert np.isfinite(result.scores[frame]) == present, f"object {index} frame {frame}: occlusion decision"
            ious.append(float(iou))
    return ious


def test_three_objects_together_match_metas_video_predictor(golden, predictor, frames):
    from napari_sam.engine import propagate_objects

    meta, arrays = golden
    run = meta["objects"]
    prompts = _our_prompts(run["objects"], run["frame_shape"])
    results = propagate_objects(predictor, frames, prompts)
    assert len(results) == 3 and [r.seed_plane for r in results] == [1, 3, 2]
    ious = _compare(results, run, arrays, "objects")
    assert len(ious) == 3 * len(frames)
    # the mask object's prompted plane is the mask as given
    np.testing.assert_array_equal(results[2].plane_mask(2), prompts[2]["mask"])
    assert results[2].scores[2] == 1.0
    # the objects are different objects, not three copies of one
    assert not np.array_equal(results[0].mask, results[1].mask)


def test_a_correction_of_one_object_repropagates_all_as_metas_video_predictor(golden, predictor, frames):
    # Meta: a positive and a negative click on frame 0 for the box object (frame 0 was last tracked backward,
    # so the correction looks backward too), then propagate forward from the earliest prompted frame, now 0
    from napari_sam.engine import propagate_objects

    meta, arrays = golden
    run = meta["objects"]
    first = propagate_objects(predictor, frames, _our_prompts(run["objects"], run["frame_shape"]))
    correction = run["correction"]
    prompts = [None] * len(first)
    prompts[correction["object"]] = {"plane": correction["frame"], "points": [[y, x] for x, y in correction["points"]],
                                     "labels": correction["labels"]}
    corrected = propagate_objects(predictor, frames, prompts, previous=first, direction="forward")
    corrected_run = {"frame_shape": run["frame_shape"], "passes": {"forward": run["passes"]["corrected"],
                                                                   "backward": []}}
    shape = tuple(run["frame_shape"])
    prefixed = {key.replace("objects/corrected/", "objects/forward/", 1): value
                for key, value in arrays.items() if key.startswith("objects/corrected/")}
    _compare(corrected, corrected_run, prefixed, "objects")
    box_object = correction["object"]
    assert sorted(corrected[box_object].extras["sam2_memory"].conditioning) == [0, 3]
    assert not np.array_equal(corrected[box_object].plane_mask(0), first[box_object].plane_mask(0))
    assert shape == corrected[box_object].plane_mask(0).shape


def test_a_seed_mask_propagates_with_memory_as_metas_add_new_mask(golden, predictor, frames):
    from napari_sam.engine import propagate_object

    meta, arrays = golden
    run = meta["mask_alone"]
    (prompt,) = _our_prompts(run["objects"], run["frame_shape"])
    result = propagate_object(predictor, frames, prompt["plane"], seed_mask=prompt["mask"])
    assert "sam2_memory" in result.extras  # through the memory, not slice by slice
    assert sorted(result.extras["sam2_memory"].conditioning) == [prompt["plane"]]
    _compare([result], run, arrays, "mask_alone")


def test_objects_are_yielded_as_computed_and_each_can_be_corrected_alone(predictor, frames):
    from napari_sam.engine import iter_objects_propagation, propagate_object

    prompts = [{"plane": 2, "points": [[45.0, 60.0]], "labels": [1]}, {"plane": 4, "box": [30, 20, 70, 60]}]
    steps = iter_objects_propagation(predictor, frames, prompts, direction="forward", z_range=(1, 4),
                                     spacing=(2.0, 0.5, 0.5), storage_device="cpu")
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as stop:
            results = stop.value
            break
    assert [(index, plane_result.plane) for index, plane_result in seen[:2]] == [(0, 2), (1, 4)]  # prompts first
    assert {(i, r.plane) for i, r in seen[2:]} == {(0, 3), (0, 4), (1, 2), (1, 3)}  # from plane 2 to z_range's end
    assert all(not np.isfinite(r.scores[[0, 1, 5]]).any() for r in results)  # nothing outside what was asked
    assert all(r.extras["spacing"] == (2.0, 0.5, 0.5) for r in results)
    for index, result in enumerate(results):  # the whole result is what was yielded for it
        for i, plane_result in seen:
            if i == index:
                np.testing.assert_array_equal(result.plane_mask(plane_result.plane), plane_result.mask)
    corrected = propagate_object(predictor, frames, 3, points=[[40.0, 50.0], [10.0, 10.0]], labels=[1, 0],
                                 previous=results[0], direction="forward")
    assert sorted(corrected.extras["sam2_memory"].conditioning) == [2, 3]


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({"plane": 1, "points": [[1, 1]], "labels": [1]}, "one dict per object"),
        ([], "one dict per object"),
        ([{"points": [[1, 1]], "labels": [1]}], "'plane'"),
        ([{"plane": 9, "points": [[1, 1]], "labels": [1]}], "plane"),
        ([{"plane": 1}], "points"),
        ([{"plane": 1, "mask": np.zeros((96, 128), bool)}], "empty"),
        ([{"plane": 1, "box": [0, 0, 5, 5], "colour": "red"}], "unknown"),
        ([None], "'plane'"),
        ([{"plane": 1, "box": [0, 0, 5, 5]}, {"plane": 0, "box": [0, 0, 5, 5]}], "z_range"),
    ],
)
def test_bad_prompts_are_refused_before_anything_is_computed(predictor, frames, prompts, message):
    from napari_sam.engine import propagate_objects

    z_range = (1, 3) if message == "z_range" else None
    with pytest.raises(InputError, match=message):
        propagate_objects(predictor, frames, prompts, z_range=z_range)


def test_several_objects_need_a_model_with_memory(tiny_model, frames):
    from napari_sam.engine import Predictor, propagate_objects

    with pytest.raises(InputError, match="SAM 2"):
        propagate_objects(Predictor(tiny_model, device="cpu"), frames[..., 0], [{"plane": 0, "box": [0, 0, 9, 9]}])


def test_prompting_a_plane_again_before_propagating_refines_it_without_memory(golden):
    # Meta: a frame no propagation has passed over stays an initial frame (no memory), its logits fed back
    import torch

    from napari_sam.engine.volume.sam2_memory import Sam2MemoryTracker

    meta, _ = golden
    model = W.load_deterministic_weights(build_sam2("tiny_sam2_test"), meta["memory"]["weight_seed"])
    size = model.config.img_size
    with torch.inference_mode():
        features, high_res = model.encode_frame(W.standard_normal((1, 3, size, size), 5))
    tracker = Sam2MemoryTracker(model, num_frames=3)
    click = torch.tensor([[[0.4 * size, 0.5 * size]]]), torch.tensor([[1]])
    first = tracker.prompt(0, features, high_res, *click)
    two = torch.tensor([[[0.4 * size, 0.5 * size], [0.8 * size, 0.2 * size]]]), torch.tensor([[1, 0]])
    again = tracker.prompt(0, features, high_res, *two)
    assert list(tracker.conditioning) == [0] and not tracker.tracked
    assert not torch.allclose(again.low_res_logits, first.low_res_logits)
