"""Image preparation: any 2D image -> uint8 RGB -> SAM's normalised, padded input."""

import numpy as np
import pytest

from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.preprocessing import (
    image_to_model_input,
    intensity_range,
    resized_shape,
    to_uint8_rgb,
)
from napari_sam.model.config import TINY_VIT


def test_uint8_rgb_passes_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_rgb(rgb), rgb)


def test_uint8_gray_repeated_and_rgba_drops_alpha():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_uint8_rgb(gray)
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    rgba = np.dstack([gray, gray + 1, gray + 2, np.full_like(gray, 7)])
    np.testing.assert_array_equal(to_uint8_rgb(rgba), rgba[..., :3])


def test_uint16_scaled_by_percentiles_not_min_max():
    img = np.full((100, 100), 1000, dtype=np.uint16)
    img[:50] = 2000
    img[0, 0] = 65535  # one hot pixel must not compress everything else to black
    out = to_uint8_rgb(img)[..., 0]
    assert out[60, 60] == 0 and out[10, 10] == 255


def test_shared_intensity_range_scales_slices_alike():
    stack = np.stack([np.full((8, 8), 10.0), np.full((8, 8), 20.0)])
    lo_hi = intensity_range(stack)
    a, b = (to_uint8_rgb(s, lo_hi)[0, 0, 0] for s in stack)
    assert a == 0 and b == 255


def test_two_channels_become_rgb_with_empty_blue():
    img = np.random.default_rng(1).random((6, 5, 2)).astype(np.float32)
    out = to_uint8_rgb(img)
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    assert (out[..., 2] == 0).all() and out[..., 0].max() == 255


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 5, 6, 7)), "2D image"),
        (np.zeros(10), "2D image"),
        (np.zeros((0, 5)), "empty"),
        (np.zeros((10, 10, 5)), "channels"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
    ],
)
def test_bad_images_are_refused_clearly(image, message):
    with pytest.raises(InputError, match=message):
        to_uint8_rgb(image)


def test_model_input_is_resized_normalised_and_padded():
    import torch

    rgb = np.full((100, 200, 3), 255, dtype=np.uint8)
    x = image_to_model_input(rgb, TINY_VIT)
    s = TINY_VIT.img_size
    h, w = resized_shape((100, 200), s)
    assert (h, w) == (s // 2, s)
    assert x.shape == (1, 3, s, s)
    expected = (255 - torch.tensor(TINY_VIT.pixel_mean)) / torch.tensor(TINY_VIT.pixel_std)
    torch.testing.assert_close(x[0, :, h - 1, w - 1], expected)
    assert (x[0, :, h:, :] == 0).all()  # padding after normalisation is zero


def test_one_pixel_wide_image_keeps_one_column():
    assert resized_shape((1000, 1), 256) == (256, 1)


def test_medsam_preprocessing_fills_the_square_in_unit_range():
    rgb = np.zeros((100, 200, 3), dtype=np.uint8)
    rgb[:, 100:] = 200
    x = image_to_model_input(rgb, TINY_VIT, preprocessing="medsam")
    s = TINY_VIT.img_size
    assert x.shape == (1, 3, s, s)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert float(x[0, 0, -1, -1]) == 1.0  # no padding: the image fills the whole input


def test_medsam_model_predicts_at_original_size(tiny_model):
    from napari_sam.engine import Predictor

    tiny_model.preprocessing = "medsam"
    p = Predictor(tiny_model, device="cpu", precision="fp32")
    p.set_image(np.random.default_rng(0).random((40, 120)))
    assert p.embedding.input_size == (TINY_VIT.img_size, TINY_VIT.img_size)
    masks, _, _ = p.predict(box=[5, 10, 30, 100], multimask=False)
    assert masks.shape == (1, 40, 120)
