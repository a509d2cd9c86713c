"""Turning any 2D image into what SAM's released models expect.

SAM was trained on 8-bit RGB photographs: the longest side resized to the model's
input size ``S`` (bilinear, antialiased), normalised with the ImageNet mean/std
(in 0-255 units) and zero-padded at the bottom/right to ``S x S``.

* uint8 RGB passes unchanged; uint8 RGBA drops alpha; uint8 grayscale is repeated
  to three channels.
* Other dtypes (uint16, int, float, bool) are scaled to 0-255 with robust
  percentiles (0.5 and 99.5 by default), per channel, never min-max; a stack or a
  set of tiles should pass one ``intensity_range`` so every slice is scaled alike.
  The arithmetic is float64, so values on a large offset (uint32 3e9 + [0..1000],
  float64 1e7 + x, int64 2**40 + [...]) keep their grey levels. 64-bit integers
  beyond 2**53 are scaled exactly relative to their minimum when the range is the
  image's own; a given range float64 cannot resolve there is refused.
* Two channels become (c0, c1, 0); more than four channels must be reduced by the user.

MedSAM-style models (``preprocessing="medsam"``) instead take the whole image
resized to ``S x S`` (aspect ratio not kept) and min-max scaled to [0, 1].

Image arrays are (H, W) or (H, W, C) in napari's (row, col) pixel frame. A
channels-first (C, H, W) array is refused with a hint rather than guessed at: it
is indistinguishable from a C-slice stack, and either guess would give wrong masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import channels_first_hint

if TYPE_CHECKING:
    import torch

    from napari_sam.model.config import SamConfig

DEFAULT_PERCENTILES = (0.5, 99.5)
_MAX_SAMPLES = 2_000_000  # pixels used to estimate percentiles of a large or lazy image
_SCALE_BLOCK = 1 << 21  # values scaled per block: bounds the float64 temporaries (16 MiB)


def validate_image(image: Any) -> Any:
    """Check that ``image`` is one 2D image with channels last; returns it untouched.

    Parameters
    ----------
    image
        Array-like of shape (H, W) or (H, W, C) with C <= 4, not empty.

    Returns
    -------
    Any
        ``image`` itself (not copied, not converted).

    Raises
    ------
    InputError
        For other shapes, naming the likely mistake: a stack instead of a slice, or
        channels first (C, H, W) with C <= 4 and H, W > 4 (see ``channels_first_hint``).
    """
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (2, 3):
        raise InputError(
            f"Expected a 2D image of shape (H, W) or (H, W, C), got shape {shape}. "
            "For a 3D/4D stack pass one 2D slice (e.g. image[z])."
        )
    if any(s == 0 for s in shape):
        raise InputError(f"The image is empty (shape {shape}).")
    if channels_first_hint(shape) is not None:
        raise InputError(
            f"Got an image of shape {shape}: this looks channels-first (C, H, W) with {shape[0]} channel(s) "
            "in the first axis, but images are read channels last (H, W, C). Pass np.moveaxis(image, 0, -1) "
            "for a multichannel image, or image[i] for one slice of a stack."
        )
    if len(shape) == 3 and shape[2] > 4:
        raise InputError(
            f"Got an image of shape {shape}: {shape[2]} channels in the last axis. SAM takes up to 3 "
            "channels; pass a 2D slice if this is a stack, or choose up to three channels."
        )
    return image


def _subsample(image, max_samples: int = _MAX_SAMPLES) -> np.ndarray:
    """A strided view of at most ~max_samples pixels (lazy arrays only load that)."""
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_samples))))
    return np.asarray(image[::step, ::step])


def intensity_range(
    image: Any, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, channel_axis: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Robust (low, high) intensities of ``image``, for scaling to 0-255.

    Parameters
    ----------
    image
        Any array-like (numpy, dask, zarr) of any dimensionality; a subsample is
        read (a few planes of a stack, strided pixels of each).
    percentiles
        The low and high percentiles, in 0-100.
    channel_axis
        The axis holding channels, for one range per channel; None for one overall range.

    Returns
    -------
    low, high : np.ndarray
        float64, shape (C,) with ``channel_axis``, else shape (). NaNs are ignored
        here (``to_uint8_rgb`` refuses them).
    """
    data = image
    if channel_axis is not None:
        data = np.moveaxis(data, channel_axis, -1)  # lazy for dask; numpy reads arrays without .transpose
    # flatten leading axes lazily: sample a few planes of a stack rather than reading it all
    while data.ndim > (3 if channel_axis is not None else 2):
        n = data.shape[0]
        picks = np.unique(np.linspace(0, n - 1, num=min(n, 8)).astype(int))
        data = np.concatenate([np.asarray(data[i]) for i in picks], axis=0)
    sample = _subsample(data).astype(np.float64, copy=False)
    if channel_axis is not None:
        sample = sample.reshape(-1, sample.shape[-1])
        lo, hi = np.nanpercentile(sample, percentiles, axis=0)
    else:
        lo, hi = np.nanpercentile(sample, percentiles)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


_estimate_intensity_range = intensity_range  # to_uint8_rgb's argument of that name shadows it


def _to_hwc(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image[:, :, None]
    return image


def _minus_minimum(hwc: np.ndarray) -> np.ndarray:
    """64-bit integers minus their minimum, exactly (as uint64); other dtypes unchanged.

    float64 holds integers exactly only up to 2**53: 2**60 + [0..1000] would collapse
    to a few grey levels. Two's complement makes the int64 difference, read as uint64,
    exact even where it overflows int64.
    """
    if hwc.dtype.kind not in "iu" or hwc.dtype.itemsize < 8:
        return hwc
    return (hwc - hwc.min()).view(np.uint64)


def _check_float64_resolution(hwc: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Refuse a given range float64 cannot resolve (64-bit integers far beyond 2**53 with a narrow range)."""
    if hwc.dtype.kind not in "iu" or hwc.dtype.itemsize < 8:
        return
    magnitude = float(max(np.abs(lo).max(), np.abs(hi).max()))
    span = float(np.max(hi - lo))
    if magnitude >= 2.0**53 and span < magnitude * 2.0**-42:  # fewer than ~1000 float64 steps in the range
        raise InputError(
            f"The pixel values are around {magnitude:.4g} but span only {span:.4g}: beyond 2**53 float64 cannot "
            "tell them apart. Subtract an offset first (e.g. image - image.min()), or pass no intensity_range."
        )


def _scale_to_uint8(hwc: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(x - lo) * 255 / (hi - lo)`` clipped and rounded to uint8, in float64.

    float32 keeps ~7 digits: on 3e9 + [0..1000] it leaves a handful of grey levels,
    float64 keeps them all. Row blocks bound the float64 temporaries.
    """
    gain = 255.0 / np.where(hi > lo, hi - lo, 1.0)
    out = np.empty(hwc.shape, dtype=np.uint8)
    rows = max(1, _SCALE_BLOCK // max(1, hwc.shape[1] * hwc.shape[2]))
    for start in range(0, hwc.shape[0], rows):
        block = hwc[start : start + rows].astype(np.float64)
        block -= lo
        block *= gain
        np.clip(block, 0, 255, out=block)
        out[start : start + rows] = np.rint(block, out=block)
    return out


def to_uint8_rgb(image: Any, intensity_range: tuple | None = None) -> np.ndarray:
    """Convert a 2D image to (H, W, 3) uint8 RGB as described in the module docstring.

    Parameters
    ----------
    image
        (H, W) or (H, W, C) with C <= 4, numeric or bool, finite (see :func:`validate_image`).
    intensity_range
        (low, high) from :func:`intensity_range`, overriding the per-image
        percentiles; pass the same one for all slices/tiles of one dataset.

    Returns
    -------
    np.ndarray
        (H, W, 3) uint8, C-contiguous.

    Raises
    ------
    InputError
        The shape is not one 2D image (see :func:`validate_image`), the dtype is not
        numeric or bool, a float image holds NaN or infinity, or a given
        ``intensity_range`` is too narrow for float64 to resolve 64-bit integers.
    """
    validate_image(image)
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise InputError(f"Unsupported image dtype {image.dtype}; expected numbers or booleans.")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError("The image contains NaN or infinite values; fill or mask them before segmenting.")
    hwc = _to_hwc(image)
    channels = hwc.shape[2]
    if channels == 4:  # RGBA: alpha carries no content
        hwc = hwc[:, :, :3]
    if hwc.dtype == np.uint8 and intensity_range is None:
        scaled = hwc
    elif hwc.dtype == np.bool_ and intensity_range is None:
        scaled = hwc.astype(np.uint8) * 255
    else:
        if intensity_range is None:
            hwc = _minus_minimum(hwc)  # a shift changes no percentile-scaled value, and keeps them exact
            lo, hi = _estimate_intensity_range(hwc, channel_axis=-1)
        else:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in intensity_range)
            _check_float64_resolution(hwc, lo, hi)
        scaled = _scale_to_uint8(hwc, lo, hi)
    if scaled.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(scaled, 3, axis=2))
    if scaled.shape[2] == 2:
        return np.ascontiguousarray(np.concatenate([scaled, np.zeros_like(scaled[:, :, :1])], axis=2))
    return np.ascontiguousarray(scaled)


def resized_shape(original_size: tuple[int, int], img_size: int) -> tuple[int, int]:
    """(h, w) after resizing the longest side of ``original_size`` (H, W) to ``img_size``.

    Parameters
    ----------
    original_size
        (H, W) of the image.
    img_size
        The model's square input size ``S`` (``config.img_size``).

    Returns
    -------
    h, w : int
        Each at least 1, rounded to the nearest integer.
    """
    h, w = original_size
    scale = img_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def resize_uint8(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) uint8 to ``size`` (h, w) with PIL's antialiased bilinear filter.

    PIL is what the released models were trained and evaluated with; torch's
    antialiased interpolation differs by one grey level on ~14% of pixels.

    Parameters
    ----------
    rgb
        (H, W, 3) uint8.
    size
        The target (h, w).

    Returns
    -------
    np.ndarray
        (h, w, 3) uint8.
    """
    from PIL import Image

    h, w = size
    return np.array(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.BILINEAR))


def model_input_size(original_size: tuple[int, int], img_size: int, preprocessing: str = "sam") -> tuple[int, int]:
    """(h, w) of the image content inside the model's S x S input (the rest is padding).

    Parameters
    ----------
    original_size
        (H, W) of the image.
    img_size
        The model's square input size ``S``.
    preprocessing
        ``"sam"`` (longest side to ``S``) or ``"medsam"`` (the whole ``S x S``).

    Returns
    -------
    h, w : int
        ``(S, S)`` for ``"medsam"``, else :func:`resized_shape`.
    """
    if preprocessing == "medsam":
        return img_size, img_size
    return resized_shape(original_size, img_size)


def image_to_model_input(
    rgb: np.ndarray, config: SamConfig, device: torch.device | str = "cpu", preprocessing: str = "sam"
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, S, S) float32 tensor.

    Parameters
    ----------
    rgb
        (H, W, 3) uint8 from :func:`to_uint8_rgb`.
    config
        The model's configuration (``img_size``, ``pixel_mean``, ``pixel_std``).
    device
        Where the tensor is made.
    preprocessing
        ``sam``: longest side resized, ImageNet-normalised, zero-padded bottom/right.
        ``medsam``: resized to S x S, min-max scaled to [0, 1].

    Returns
    -------
    torch.Tensor
        (1, 3, S, S) float32 on ``device``.

    Raises
    ------
    InputError
        ``preprocessing`` is neither ``"sam"`` nor ``"medsam"``.
    """
    import torch
    import torch.nn.functional as F

    if preprocessing not in ("sam", "medsam"):
        raise InputError(f"Unknown preprocessing {preprocessing!r}; expected 'sam' or 'medsam'.")
    s = config.img_size
    h, w = model_input_size(rgb.shape[:2], s, preprocessing)
    if (h, w) != tuple(rgb.shape[:2]):
        rgb = resize_uint8(rgb, (h, w))
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
    if preprocessing == "medsam":
        lo, hi = x.amin(), x.amax()
        return (x - lo) / (hi - lo).clamp_min(1e-8)
    mean = torch.tensor(config.pixel_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, s - w, 0, s - h))
