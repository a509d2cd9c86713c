"""Synthetic z-stacks and time series with exact instance labels, for volume tests and benchmarks.

Both reuse the look of :mod:`napari_sam.engine.datasets.synthetic` (per-object brightness,
dim edges, texture, blur, uneven background, shot and read noise), the only images the
trained test model knows:

* :func:`synthetic_stack` - a (Z, H, W) volume of ellipsoids, anisotropic (``z_spacing``
  is the slice distance in in-plane pixels), sized so every object spans many planes.
  Rendered as ``synthetic.synthetic_volume`` does (the PSF in physical units), so a plane
  looks like the 2D images and objects shrink smoothly to their ends.
* :func:`synthetic_movie` - a (T, H, W) time series of objects that move and change shape
  (size, elongation, orientation) from frame to frame; labels keep one id per object in
  every frame (the ground truth of a track).

Arrays are in napari's frame, labels int32 with 0 the background and objects 1..N. Everything
is deterministic given ``seed``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from napari_sam.engine.datasets.synthetic import (
    SyntheticSample,
    SyntheticStyle,
    _place_objects,
    _rasterise,
    _render,
    _Shape,
    get_style,
    synthetic_volume,
)
from napari_sam.engine.errors import InputError

STACK_STYLE = SyntheticStyle(
    radius_range=(9.0, 16.0),
    aspect_range=(1.0, 1.5),
    irregular_fraction=0.0,
    coverage=0.22,
    max_overlap=0.15,
)
"""Objects of a z-stack: radius 9-16 in-plane pixels (the trained model's 2D objects are 8-22),
moderately dense so neighbours touch now and then."""

MOVIE_STYLE = SyntheticStyle(radius_range=(10.0, 16.0), aspect_range=(1.0, 1.6), coverage=0.08, max_overlap=0.0)
"""Objects of a time series: fewer, so that they rarely collide as they move."""


SMALL_MOVIE_STYLE = SyntheticStyle(radius_range=(6.0, 9.0), aspect_range=(1.0, 1.5), coverage=0.1, max_overlap=0.0)
"""Objects of a small (128 x 128) time series: planes smaller than the model's input are enlarged to
it, so objects of radius 6-9 look to the model as the 2D synthetic images' objects do."""


def _check_dtype(dtype: npt.DTypeLike) -> np.dtype:
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.uint16)):
        raise InputError(f"dtype must be float32 or uint16, got {np.dtype(dtype)}.")
    return np.dtype(dtype)


def synthetic_stack(
    shape: tuple[int, int, int] = (32, 128, 128),
    seed: int = 0,
    z_spacing: float = 2.0,
    style: str | SyntheticStyle = STACK_STYLE,
    dtype: npt.DTypeLike = np.float32,
    min_size: int = 60,
) -> SyntheticSample:
    """A (Z, H, W) z-stack of ellipsoids with exact labels; planes look like the 2D synthetic images.

    Parameters
    ----------
    shape
        (Z, H, W) in voxels.
    seed
        Everything is deterministic given the seed.
    z_spacing
        Slice distance in in-plane pixels (2.0: z is twice as coarse); objects are round in
        physical space, so an object of radius r spans about ``2 r / z_spacing`` planes.
    style
        A name in ``synthetic.STYLES`` or a ``SyntheticStyle`` (sizes in in-plane pixels;
        irregular boundaries are 2D only and ignored here).
    dtype
        ``float32`` (brightness) or ``uint16`` (photon counts).
    min_size
        Smallest object kept, in voxels.

    Returns
    -------
    SyntheticSample
        ``image`` (Z, H, W) of ``dtype`` and ``labels`` (Z, H, W) int32, objects 1..N.

    Raises
    ------
    InputError
        ``shape`` is not 3D and positive, ``z_spacing`` is not positive, or ``dtype`` or
        ``style`` is not one of those offered.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise InputError(f"synthetic_stack makes (Z, H, W) volumes; got shape {shape}.")
    if not z_spacing > 0:
        raise InputError(f"z_spacing must be positive, got {z_spacing}.")
    return synthetic_volume(tuple(int(s) for s in shape), seed, style, dtype, float(z_spacing), min_size)


def _movie_shape(base: _Shape, t: float, velocity: np.ndarray, phase: np.ndarray, change: float) -> _Shape:
    """``base`` at time ``t``: moved by ``velocity * t``, its size, elongation and angle changed smoothly."""
    scale = 1.0 + change * 0.5 * np.sin(0.5 * t + phase[0])
    stretch = 1.0 + change * np.sin(0.4 * t + phase[1])
    angle = change * 0.6 * np.sin(0.3 * t + phase[2])
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    # u = inverse_axes @ offset: stretch one object axis, shrink the other, rotate, scale
    deform = np.diag([stretch, 1.0 / stretch]) / scale
    inverse_axes = deform @ base.inverse_axes @ rotation.T
    return _Shape(base.centre + velocity * t, base.radius * scale, inverse_axes, base.harmonics,
                  base.extent * scale * max(stretch, 1 / stretch) + 2)


def synthetic_movie(
    shape: tuple[int, int, int] = (10, 128, 128),
    seed: int = 0,
    speed: float = 2.5,
    shape_change: float = 0.25,
    style: str | SyntheticStyle = MOVIE_STYLE,
    dtype: npt.DTypeLike = np.float32,
    min_size: int = 12,
) -> SyntheticSample:
    """A (T, H, W) time series: objects move and change shape; one label per object in every frame.

    Parameters
    ----------
    shape
        (T, H, W): frames and frame size.
    seed
        Everything is deterministic given the seed.
    speed
        Pixels per frame each object moves (in a random direction, straight).
    shape_change
        How much size, elongation and orientation change over time (0: rigid objects).
    style
        A name in ``synthetic.STYLES`` or a ``SyntheticStyle``.
    dtype
        ``float32`` or ``uint16``.
    min_size
        Smallest object kept per frame, in pixels (smaller remnants at the border are dropped).

    Returns
    -------
    SyntheticSample
        ``image`` (T, H, W) and ``labels`` (T, H, W) int32; label k is the same object in every
        frame where it is visible.

    Raises
    ------
    InputError
        ``shape`` is not 3D and positive, ``speed`` or ``shape_change`` is negative, or
        ``dtype`` or ``style`` is not one of those offered.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise InputError(f"synthetic_movie makes (T, H, W) series; got shape {shape}.")
    if speed < 0 or shape_change < 0:
        raise InputError(f"speed and shape_change must be >= 0, got {speed} and {shape_change}.")
    dtype = _check_dtype(dtype)
    style = get_style(style)
    rng = np.random.default_rng(seed)
    n_frames, h, w = (int(s) for s in shape)
    shapes = _place_objects(rng, style, (h, w), np.ones(2))
    directions = rng.uniform(0, 2 * np.pi, len(shapes))
    velocities = speed * np.stack([np.sin(directions), np.cos(directions)], axis=1)
    phases = rng.uniform(0, 2 * np.pi, (len(shapes), 3))
    labels = np.zeros((n_frames, h, w), dtype=np.int32)
    depth = np.full((n_frames, h, w), np.inf, dtype=np.float32)
    t0 = (n_frames - 1) / 2  # objects are placed for the middle frame, so they stay in view
    for t in range(n_frames):
        moved = [_movie_shape(s, t - t0, v, p, shape_change) for s, v, p in zip(shapes, velocities, phases)]
        frame, frame_depth = _rasterise_keeping_ids(moved, (h, w), min_size)
        labels[t], depth[t] = frame, frame_depth
    # no blur across frames (a PSF acts within a frame): a vanishing spacing-scaled sigma along T
    return SyntheticSample(_render(rng, labels, depth, style, dtype, np.array([1e6, 1.0, 1.0])), labels)


def _rasterise_keeping_ids(shapes: list[_Shape], frame_shape: tuple[int, int], min_size: int):
    """``_rasterise`` of one frame, with label k = shape k + 1 (it renumbers the survivors otherwise)."""
    labels = np.zeros(frame_shape, dtype=np.int32)
    depth = np.full(frame_shape, np.inf, dtype=np.float32)
    for k, shape in enumerate(shapes, start=1):
        one, one_depth = _rasterise([shape], frame_shape, min_size)
        inside = (one > 0) & (one_depth < depth)
        labels[inside] = k
        depth[inside] = one_depth[inside]
    depth[labels == 0] = np.inf
    return labels, depth
