"""Instance mode: the model's instance decoder (one pass on the image embedding) and a seeded watershed.

The decoder predicts three maps in [0, 1] (see :mod:`napari_sam.model.decoders.instance`): foreground
probability, distance to the object's centre and distance to its boundary (both small near their target).
Seeds are the connected regions where both distances are small inside the foreground; a watershed on the
boundary distance grows them over the foreground. The same semantics as micro-sam's decoder-based
segmentation, so its published decoders give the instances micro-sam gives.

All arrays are in the window's pixel frame, (row, col).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    from napari_sam.engine.predict.predictor import ImageEmbedding, Predictor

# The Gaussian smoothing of the maps: kernel radius in sigmas, and the border rule (the image mirrored about its
# edge pixels, which are not repeated). These reproduce the smoothing micro-sam applies, so seeds match.
_SMOOTHING_TRUNCATE = 3.0
_SMOOTHING_MODE = "mirror"


@dataclass(frozen=True)
class InstanceParams:
    """Settings of instance mode: THE defaults for the CLI, the widget and ``segment_everything``.

    The defaults are micro-sam's for its decoders.
    """

    foreground_threshold: float = 0.5
    """Pixels whose (smoothed) foreground probability is above this belong to objects."""
    center_distance_threshold: float = 0.5
    """Seeds are where the centre distance is below this (and the boundary distance below its threshold)."""
    boundary_distance_threshold: float = 0.5
    """Seeds are where the boundary distance is below this (and the centre distance below its threshold)."""
    foreground_smoothing: float = 1.0
    """Gaussian sigma (pixels) applied to the foreground map first, against upsampling artefacts; 0: none."""
    distance_smoothing: float = 1.6
    """Gaussian sigma (pixels) applied to both distance maps first; 0: none."""
    min_size: int = 0
    """Objects smaller than this many pixels are removed (set to background)."""

    def validate(self) -> None:
        """Check every setting's range.

        Raises
        ------
        InputError
            A setting is out of range; the message names it and its allowed range.
        """
        for name in ("foreground_threshold", "center_distance_threshold", "boundary_distance_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{name} must lie in [0, 1] (the decoder's maps are in [0, 1]), got {value!r}.")
        for name in ("foreground_smoothing", "distance_smoothing"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0.0:
                raise InputError(f"{name} must be a Gaussian sigma >= 0 in pixels (0: no smoothing), got {value!r}.")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, (int, np.integer)) or self.min_size < 0:
            raise InputError(f"min_size must be a whole number of pixels >= 0, got {self.min_size!r}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def decoder_maps(predictor: Predictor, embedding: ImageEmbedding) -> np.ndarray:
    """The instance decoder's maps for an embedded image, at the image's original size.

    Parameters
    ----------
    predictor
        Its model must have an instance decoder (``model.instance_decoder``).
    embedding
        The image's embedding (``Predictor.compute_embedding``).

    Returns
    -------
    np.ndarray
        (3, H0, W0) float32 in [0, 1]: foreground probability, centre distance, boundary distance,
        in the embedded image's (row, col) frame. The decoder runs in the predictor's precision
        (``Predictor(precision="fp32")`` for exact fp32), its output layer always in fp32.

    Raises
    ------
    InputError
        The model has no instance decoder.
    """
    import torch

    decoder = getattr(predictor.model, "instance_decoder", None)
    if decoder is None:
        from napari_sam.engine.automatic.params import DECODER_MODELS_HINT

        raise InputError(f"Instance mode needs {DECODER_MODELS_HINT}; this model has none. Use automatic mask "
                         f"generation (method 'amg') with it instead.")
    # In the predictor's precision, as the encoder: bf16 runs the decoder about 2.8x faster on a CPU with native
    # bf16 (measured: tiny v2-sized decoder, one thread); its output layer stays fp32, so the maps stay smooth.
    features = embedding.features.to(predictor.device, torch.float32)
    with torch.inference_mode(), predictor.autocast():
        maps = decoder.maps(features, embedding.input_size, embedding.original_size)
    return maps[0].float().cpu().numpy()


def _smoothed(values: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    if sigma <= 0:
        return values
    return ndimage.gaussian_filter(values, sigma, mode=_SMOOTHING_MODE, truncate=_SMOOTHING_TRUNCATE)


def instances_from_maps(maps: np.ndarray, params: InstanceParams | None = None) -> np.ndarray:
    """Instances from the decoder's maps by a seeded watershed.

    The foreground map is smoothed (``foreground_smoothing``), both distance maps too
    (``distance_smoothing``); the foreground is where it exceeds ``foreground_threshold``; seeds are the
    8-connected regions of foreground where both distances are below their thresholds; a watershed on the
    boundary distance (4-connected flooding) grows the seeds over the foreground. Objects smaller than
    ``min_size`` pixels become background.

    Parameters
    ----------
    maps
        (3, H, W): foreground probability, centre distance, boundary distance, (row, col) frame.
    params
        The thresholds and smoothing; default ``InstanceParams()``.

    Returns
    -------
    np.ndarray
        (H, W) int32 labels, 0 the background, objects numbered 1..n without gaps (in order of their
        seed's first pixel in row-major order).

    Raises
    ------
    InputError
        ``params`` is invalid, or ``maps`` is not a (3, H, W) array of finite numbers.
    """
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    params = params or InstanceParams()
    params.validate()
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != 3 or 0 in maps.shape:
        raise InputError(f"maps must be (3, H, W) (foreground, centre and boundary distance), got {maps.shape}.")
    if not np.issubdtype(maps.dtype, np.number) or not np.all(np.isfinite(maps)):
        raise InputError("maps must hold finite numbers (the decoder predicted NaN or infinity?).")
    maps = maps.astype(np.float32, copy=False)
    foreground = _smoothed(maps[0], float(params.foreground_smoothing))
    centre = _smoothed(maps[1], float(params.distance_smoothing))
    boundary = _smoothed(maps[2], float(params.distance_smoothing))

    inside = foreground > params.foreground_threshold
    seeds = inside & (centre < params.center_distance_threshold) & (boundary < params.boundary_distance_threshold)
    markers = label(seeds, connectivity=2)
    labels = watershed(boundary, markers=markers, mask=inside, connectivity=1)
    if params.min_size > 0 and labels.any():
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes < params.min_size)
        labels[np.isin(labels, small[small > 0])] = 0
        labels = relabel_sequential(labels)[0]
    return labels.astype(np.int32, copy=False)


def segment_instances(
    predictor: Predictor,
    pixels: np.ndarray | None,
    params: InstanceParams | None = None,
    intensity_range: tuple | None = None,
    embedding: ImageEmbedding | None = None,
) -> np.ndarray:
    """Instance segmentation of one window: embedding (unless given), decoder maps, seeded watershed.

    Parameters
    ----------
    predictor
        Its model must have an instance decoder; its current image is not changed.
    pixels
        (H, W) or (H, W, C) window of any numeric dtype; may be None when ``embedding`` is given.
    params
        The post-processing settings; default ``InstanceParams()``.
    intensity_range
        The (low, high) intensities mapped to 0-255 for the embedding (e.g. the whole image's);
        None: the window's own.
    embedding
        The window's precomputed embedding; ``pixels`` is then not embedded again.

    Returns
    -------
    np.ndarray
        (H, W) int32 labels, 0 the background, ids 1..n; all zeros for a blank window
        (every pixel equal, or a flat intensity range), without running the model.

    Raises
    ------
    InputError
        ``params`` is invalid, the model has no instance decoder, neither ``pixels`` nor
        ``embedding`` is given, or the pixels cannot be used.
    """
    from napari_sam.engine.automatic.tiling import window_is_blank

    params = params or InstanceParams()
    params.validate()
    if getattr(predictor.model, "instance_decoder", None) is None:
        decoder_maps(predictor, embedding)  # raises the InputError naming the models that have one
    if embedding is None:
        if pixels is None:
            raise InputError("Give the window's pixels or its embedding.")
        pixels = np.asarray(pixels)
        if pixels.ndim in (2, 3) and pixels.size and window_is_blank(pixels, intensity_range):
            return np.zeros(pixels.shape[:2], dtype=np.int32)
        embedding = predictor.compute_embedding(pixels, intensity_range)
    return instances_from_maps(decoder_maps(predictor, embedding), params)
