"""Intensity windows: parsing, one mapping for every plane, and that a suitable window helps SAM."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.datasets.synthetic_ct import LESION, ORGAN, synthetic_ct
from napari_sam.engine.errors import InputError
from napari_sam.engine.metrics import mask_iou
from napari_sam.engine.predict.preprocessing import image_to_model_input, to_uint8_rgb
from napari_sam.engine.predict.windows import (
    CT_PRESETS,
    WindowedVolume,
    parse_window,
    window_range,
)


def test_presets_and_custom_windows():
    assert CT_PRESETS["abdomen"] == (400, 40) and CT_PRESETS["lung"] == (1500, -600)
    assert window_range(parse_window("liver")) == (-15.0, 135.0)
    assert window_range(parse_window("Bone")) == (-500.0, 1300.0)
    assert window_range(parse_window("400,40")) == (-160.0, 240.0)
    assert parse_window("soft-tissue") == parse_window("abdomen")
    assert parse_window("400,40").spec() == "400,40" and parse_window("brain").spec() == "brain"
    assert "Liver (W 150, L 60: -15 to 135)" == parse_window("liver").describe()


@pytest.mark.parametrize("text", ["0,40", "-10,40", "nan,40"])
def test_width_must_be_positive(text):
    with pytest.raises(InputError, match="width > 0"):
        parse_window(text)


def test_unknown_window_lists_presets():
    with pytest.raises(InputError, match="abdomen \\(400,40\\).*liver"):
        parse_window("kidney")


def test_percentile_window_measures_the_volume():
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    lo, hi = window_range(parse_window("p1-99"), volume)
    assert 0 < lo < 20 and 980 < hi < 1000
    with pytest.raises(InputError, match="needs the image"):
        window_range(parse_window("mr"))


def test_same_hu_gives_the_same_model_input_on_every_plane(tiny_model):
    """Planes with very different content (air only, bone, soft tissue) map one HU to one input value."""
    volume = np.full((3, 64, 64), -1000, dtype=np.int16)
    volume[1, 10:50, 10:50] = 1500  # a plane full of bone: a per-plane scaling would darken the rest
    volume[2, 20:40, 20:40] = -300
    probe = (slice(0, 8), slice(0, 8))
    for z in range(3):
        volume[z][probe] = 60  # the same liver-like value in the corner of every plane
    lo, hi = window_range(parse_window("liver"))
    rgbs = [to_uint8_rgb(plane, intensity_range=(lo, hi)) for plane in volume]
    assert {int(rgb[probe].min()) for rgb in rgbs} == {int(rgb[probe].max()) for rgb in rgbs} == {int(np.rint(75 * 255 / 150))}
    assert all(rgb[volume[z] <= lo].max() == 0 for z, rgb in enumerate(rgbs))  # clipped below the window
    assert rgbs[1][volume[1] >= hi].min() == 255  # and above it
    inputs = [image_to_model_input(rgb, tiny_model.config)[0, :, 1:3, 1:3] for rgb in rgbs]
    for other in inputs[1:]:
        assert np.array_equal(inputs[0].numpy(), other.numpy())
    # the lazy windowed volume the automatic segmentation reads is the same arithmetic
    windowed = WindowedVolume(volume, (lo, hi))
    for z in range(3):
        np.testing.assert_array_equal(windowed[z], rgbs[z][..., 0])


def lesion_box_ious(predictor, ct, intensity_range) -> list[float]:
    """IoU of a box prompt around each lesion on its largest plane."""
    ious = []
    for label in range(1, int(ct.lesions.max()) + 1):
        areas = (ct.lesions == label).sum(axis=(1, 2))
        z = int(np.argmax(areas))
        truth = ct.lesions[z] == label
        rows, cols = np.nonzero(truth)
        predictor.set_image(ct.image[z], intensity_range=intensity_range)
        masks, _, _ = predictor.predict(box=[rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], multimask=False)
        ious.append(mask_iou(masks[0], truth))
    return ious


def test_a_liver_window_segments_lesions_better_than_full_range(trained_model):
    """The tiny fixture model (trained on fluorescence-like images) with box prompts on lesions in an organ."""
    from napari_sam.engine import Predictor

    predictor = Predictor(trained_model, device="cpu", precision="fp32")
    full, liver = [], []
    for seed in (0, 1):
        ct = synthetic_ct(seed=seed)
        assert ct.image[ct.lesions > 0].mean() == pytest.approx(LESION, abs=5)
        assert ct.image[ct.organ & (ct.lesions == 0)].mean() == pytest.approx(ORGAN, abs=5)
        full += lesion_box_ious(predictor, ct, (float(ct.image.min()), float(ct.image.max())))
        liver += lesion_box_ious(predictor, ct, window_range(parse_window("liver")))
    print(f"box IoU on lesions: full range {np.mean(full):.3f}, liver window {np.mean(liver):.3f}")
    assert np.mean(liver) > np.mean(full) + 0.08
