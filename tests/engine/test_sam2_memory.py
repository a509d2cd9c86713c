"""SAM 2 memory tracking against Meta's ``track_step`` (sam2.1 video-predictor settings), tiny config, fp32.

``tools/make_golden_sam2.py`` ran Meta's model through a short sequence (``memory`` in
``tests/data/golden/sam2_tiny_sam2_test.json``): a click on frame 0, frames 1-5 tracked from
memory, a correction (positive + negative click, previous logits fed back) on frame 3, then
frames 4 and 5 tracked again with the corrected frame in memory. The weights (their own seed)
make the object present on some steps and absent on others, so both occlusion paths run. Our
:class:`~napari_sam.engine.volume.sam2_memory.Sam2MemoryTracker` replays it on the same
deterministic weights and seeded frames; every step's mask logits, object pointer, object score
(occlusion decision) and encoded memory must match.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine.volume.sam2_memory import Sam2MemoryTracker
from napari_sam.model.sam2 import build_sam2

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "sam2_tiny_sam2_test"
_spec = importlib.util.spec_from_file_location("_sam2_memory_weights", Path(__file__).parents[1] / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)
RTOL, ATOL = 1e-3, 1e-4  # fp32 on both sides; differences come from operation order


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    with np.load(GOLDEN.with_suffix(".npz")) as data:
        arrays = {key: data[key] for key in data.files if key.startswith("memory/")}
    return meta, arrays


@pytest.fixture(scope="module")
def replay(golden):
    """Our tracker through the golden's steps: one FrameState per step."""
    meta, _ = golden
    plan = meta["memory"]
    model = W.load_deterministic_weights(build_sam2("tiny_sam2_test"), plan["weight_seed"])
    size = model.config.img_size
    with torch.inference_mode():
        frames = [model.encode_frame(W.standard_normal((1, 3, size, size), seed)) for seed in plan["frame_seeds"]]
    tracker = Sam2MemoryTracker(model, num_frames=len(frames))
    states = []
    for frame, kind in plan["steps"]:
        features, high_res = frames[frame]
        if kind == "track":
            states.append(tracker.track(frame, features, high_res))
        else:
            coords = torch.tensor([plan[f"{kind}_points" if kind == "seed" else "correction_points"]])
            labels = torch.tensor([plan["seed_labels" if kind == "seed" else "correction_labels"]])
            states.append(tracker.prompt(frame, features, high_res, coords, labels))
    return states


def _close(ours: torch.Tensor, expected: np.ndarray, what: str) -> None:
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(ours.float().numpy(), expected, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def test_every_step_matches_metas_track_step(golden, replay):
    meta, arrays = golden
    steps = meta["memory"]["steps"]
    assert len(replay) == len(steps) == 9
    for index, state in enumerate(replay):
        what = f"step {index} {steps[index]}"
        _close(state.low_res_logits, arrays[f"memory/{index}/pred_masks"], f"{what} mask logits")
        _close(state.object_pointer, arrays[f"memory/{index}/obj_ptr"], f"{what} object pointer")
        _close(state.object_score, arrays[f"memory/{index}/object_score_logits"], f"{what} object score")
        _close(state.memory, arrays[f"memory/{index}/maskmem_features"], f"{what} memory")
        expected_present = arrays[f"memory/{index}/object_score_logits"][:, 0] > 0
        np.testing.assert_array_equal(state.present.numpy(), expected_present, err_msg=f"{what} occlusion decision")


def test_masks_agree_with_meta_at_full_resolution(golden, replay):
    _, arrays = golden
    for index, state in enumerate(replay):
        ours = state.low_res_logits.float().numpy() > 0
        theirs = arrays[f"memory/{index}/pred_masks"] > 0
        union = np.logical_or(ours, theirs).sum()
        assert union == 0 or np.logical_and(ours, theirs).sum() / union >= 0.99, f"step {index}"


def test_the_sequence_exercises_presence_absence_and_the_correction(golden, replay):
    presence = [bool(state.present[0]) for state in replay]
    assert any(presence) and not all(presence)
    before, after = replay[4].low_res_logits, replay[7].low_res_logits  # frame 4 before and after the correction
    assert not torch.allclose(before, after) or presence[4] != presence[7]
    assert not torch.allclose(replay[4].memory, replay[7].memory)


# ------------------------------------------------------------------ propagation through a stack


def _video_frames(meta) -> np.ndarray:
    spec = importlib.util.spec_from_file_location("_golden_sam2_tool", Path(__file__).parents[2] / "tools" / "make_golden_sam2.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    frames = tool.video_frames()
    assert W.array_digest(frames) == meta["video"]["frames_digest"], "the frames no longer regenerate bit-identically"
    return frames


@pytest.fixture(scope="module")
def video(golden):
    """Our propagate_object on the golden's frames: the first run (both ways) and its correction."""
    from napari_sam.engine import Predictor, propagate_object

    meta, _ = golden
    plan = meta["video"]
    model = W.load_deterministic_weights(build_sam2("tiny_sam2_test"), meta["memory"]["weight_seed"])
    predictor = Predictor(model, device="cpu", precision="fp32")
    frames = _video_frames(meta)
    rc = lambda xy: [[y, x] for x, y in xy]  # noqa: E731  (x, y) pixels -> napari (row, col)
    first = propagate_object(predictor, frames, plan["seed_frame"], points=rc(plan["seed_points"]),
                             labels=plan["seed_labels"], direction="both")
    corrected = propagate_object(predictor, frames, plan["correction_frame"], points=rc(plan["correction_points"]),
                                 labels=plan["correction_labels"], previous=first)
    return first, corrected


def _expected_mask(arrays, meta, pass_name: str, frame: int) -> np.ndarray:
    shape = tuple(meta["video"]["frame_shape"])
    bits = np.unpackbits(arrays[f"video/{pass_name}/{frame}/mask_packed"], count=shape[0] * shape[1])
    return bits.reshape(shape).astype(bool)


def test_propagation_matches_metas_video_predictor_frame_by_frame(golden, video):
    meta, _ = golden
    with np.load(GOLDEN.with_suffix(".npz")) as data:
        arrays = {key: data[key] for key in data.files if key.startswith("video/")}
    first, corrected = video
    passes = meta["video"]["passes"]
    checks = [(first, "forward", f) for f in passes["forward"]] + [(first, "backward", f) for f in passes["backward"]]
    checks += [(corrected, "corrected", f) for f in passes["corrected"]]
    checks += [(corrected, "backward", f) for f in passes["backward"] if f < meta["video"]["seed_frame"]]  # kept
    for result, pass_name, frame in checks:
        expected = _expected_mask(arrays, meta, pass_name, frame)
        ours = result.plane_mask(frame)
        union = np.logical_or(ours, expected).sum()
        iou = 1.0 if union == 0 else np.logical_and(ours, expected).sum() / union
        assert iou >= 0.99, f"{pass_name} frame {frame}: IoU {iou:.4f}"
        present = arrays[f"video/{pass_name}/{frame}/object_score_logits"][0, 0] > 0
        assert np.isfinite(result.scores[frame]) == present, f"{pass_name} frame {frame}: occlusion decision"


def test_object_pointers_match_metas_after_the_correction(golden, video):
    meta, _ = golden
    with np.load(GOLDEN.with_suffix(".npz")) as data:
        arrays = {key: data[key] for key in data.files if key.startswith("video/corrected/")}
    _, corrected = video
    tracker = corrected.extras["sam2_memory"]
    for frame in meta["video"]["passes"]["corrected"]:
        state = tracker.conditioning.get(frame) or tracker.tracked[frame]
        _close(state.object_pointer, arrays[f"video/corrected/{frame}/obj_ptr"], f"frame {frame} object pointer")
    assert sorted(tracker.conditioning) == [meta["video"]["seed_frame"], meta["video"]["correction_frame"]]


def test_memory_stays_bounded_on_a_long_stack_without_changing_the_result(monkeypatch):
    from dataclasses import replace

    from napari_sam.engine import Predictor, propagate_object
    from napari_sam.engine.volume.sam2_memory import Sam2MemoryTracker
    from napari_sam.model.config import TINY_SAM2

    # short memory and pointer windows, so a 12-plane stack is already "long"
    config = replace(TINY_SAM2, name="tiny_sam2_short_memory", num_maskmem=3, max_obj_ptrs_in_encoder=4)
    model = W.load_deterministic_weights(build_sam2(config), seed=7)
    predictor = Predictor(model, device="cpu", precision="fp32")
    planes = 12
    big = W.synthetic_cells_image(64 + planes, 64, seed=9)
    stack = np.stack([big[t : t + 64] for t in range(planes)])
    bounded = propagate_object(predictor, stack, 0, points=[[32.0, 32.0]], labels=[1], direction="forward")
    tracker = bounded.extras["sam2_memory"]
    reach = max(config.num_maskmem - 1, config.max_obj_ptrs_in_encoder - 1)
    last = planes - 1
    assert sorted(tracker.tracked) == [*range(1, reach + 1), *range(last + 1 - reach, last + 1)]  # not all 11
    assert all(state.memory.dtype == torch.bfloat16 for state in tracker.tracked.values())

    monkeypatch.setattr(Sam2MemoryTracker, "forget_outside", lambda self, frame, reverse=False: None)
    unbounded = propagate_object(predictor, stack, 0, points=[[32.0, 32.0]], labels=[1], direction="forward",
                                 cache=bounded.extras["embeddings"])
    assert len(unbounded.extras["sam2_memory"].tracked) == last
    np.testing.assert_array_equal(bounded.mask, unbounded.mask)
    np.testing.assert_array_equal(np.isfinite(bounded.scores), np.isfinite(unbounded.scores))


def test_the_prompted_plane_is_what_the_predictor_gives_for_the_same_click_or_box():
    from napari_sam.engine import Predictor, propagate_object

    model = W.load_deterministic_weights(build_sam2("tiny_sam2_test"), seed=7)
    predictor = Predictor(model, device="cpu", precision="fp32")
    big = W.synthetic_cells_image(70, 90, seed=4)
    stack = np.stack([big[t : t + 60, t : t + 80] for t in range(3)])  # non-square planes: rows and cols differ
    click, box = [[22.0, 51.0]], [10.0, 30.0, 45.0, 70.0]
    by_click = propagate_object(predictor, stack, 1, points=click, labels=[1], direction="forward")
    by_box = propagate_object(predictor, stack, 1, box=box, direction="forward")
    assert by_click.plane_mask(1).any() and by_box.plane_mask(1).any()
    predictor.set_image(stack[1])
    masks, scores, _ = predictor.predict(points=click, labels=[1])  # one click: the best of three, as tracking picks
    np.testing.assert_array_equal(by_click.plane_mask(1), masks[int(scores.argmax())])
    box_mask, _, _ = predictor.predict(box=box, multimask=False)
    np.testing.assert_array_equal(by_box.plane_mask(1), box_mask[0])
