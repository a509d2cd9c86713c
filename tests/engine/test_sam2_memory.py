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
