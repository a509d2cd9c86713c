"""Synthetic fluorescence microscopy with exact instance labels (numpy + scikit-image).

Nuclei- and cell-like objects (ellipses, irregular blobs, ellipsoids in 3D) are
placed at random, allowed to touch and overlap, and every pixel is given to the
object whose shape it lies deepest inside (smallest normalised radial distance).
That resolves overlaps into an exact instance label image, whose borders between
touching objects look like the flattened contacts of real nuclei. The label image
is then rendered: per-object brightness, a dim-edge profile and smooth texture,
optical blur, an uneven background, Poisson (shot) and Gaussian (read) noise.

Everything is deterministic given ``seed``. Arrays are in napari's pixel frame:
``(H, W)`` images, ``(Z, H, W)`` volumes; labels are int32, 0 = background,
objects numbered 1..N without gaps.

``varied_image`` (and ``SyntheticDataset(..., varied=True)``) draws every image from a
much wider distribution: any base style varied further, several noise models, textures,
hazy or debris-strewn backgrounds, and the dtype and intensity range of the file
(float32 at any scale, uint16 with camera offsets, uint8 that may be dim or saturated).
The fixed styles above are unchanged by it (tests rely on their exact images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError


@dataclass(frozen=True)
class SyntheticStyle:
    """Looks of one synthetic distribution (sizes in pixels, intensities relative to peak 1.0)."""

    radius_range: tuple[float, float] = (8.0, 22.0)
    """Range of the objects' mean radius (geometric mean of the semi-axes)."""
    aspect_range: tuple[float, float] = (1.0, 1.8)
    """Range of major/minor semi-axis ratio."""
    irregular_fraction: float = 0.5
    """Fraction of objects that are irregular blobs instead of plain ellipses."""
    irregularity: float = 0.12
    """Amplitude of the boundary's harmonic wobble for irregular blobs (relative radius)."""
    coverage: float = 0.3
    """Target fraction of the image area covered by objects (density)."""
    max_overlap: float = 0.3
    """How far two objects may overlap: centres stay at least ``(1 - max_overlap) * (r1 + r2)`` apart."""
    intensity_range: tuple[float, float] = (0.35, 1.0)
    """Range of per-object brightness."""
    edge_falloff: float = 0.3
    """Brightness lost from the centre to the edge of an object (fraction)."""
    texture: float = 0.12
    """Strength of the smooth multiplicative texture inside objects."""
    blur_sigma: float = 1.0
    """Gaussian point-spread function sigma."""
    background_level: float = 0.08
    """Mean background brightness."""
    background_variation: float = 0.6
    """Relative unevenness of the background (illumination gradient and haze)."""
    photons: float = 150.0
    """Expected photon count at brightness 1.0; lower means stronger Poisson noise."""
    read_noise: float = 0.015
    """Gaussian read noise standard deviation (relative to brightness 1.0)."""


STYLES: dict[str, SyntheticStyle] = {
    # the default: ellipses and irregular blobs, a range of sizes and densities
    "mixed": SyntheticStyle(),
    # small, round, well separated nuclei
    "small_nuclei": SyntheticStyle(
        radius_range=(4.0, 7.0),
        aspect_range=(1.0, 1.25),
        irregular_fraction=0.0,
        coverage=0.2,
        max_overlap=0.1,
        intensity_range=(0.5, 1.0),
        edge_falloff=0.2,
        texture=0.05,
    ),
    # medium nuclei, crowded and touching
    "dense_nuclei": SyntheticStyle(
        radius_range=(7.0, 14.0),
        aspect_range=(1.0, 1.5),
        irregular_fraction=0.3,
        irregularity=0.08,
        coverage=0.5,
        max_overlap=0.35,
    ),
    # large irregular cells, dim and textured
    "cells": SyntheticStyle(
        radius_range=(16.0, 34.0),
        aspect_range=(1.0, 2.2),
        irregular_fraction=1.0,
        irregularity=0.2,
        coverage=0.4,
        max_overlap=0.3,
        intensity_range=(0.25, 0.8),
        edge_falloff=0.15,
        texture=0.25,
        blur_sigma=1.5,
    ),
}


class SyntheticSample(NamedTuple):
    """One synthetic image (or volume) and its exact instance labels."""

    image: np.ndarray
    """``(H, W)`` or ``(Z, H, W)``, float32 (brightness, background ~0.1, objects ~1) or uint16 (counts)."""
    labels: np.ndarray
    """Same shape as ``image``, int32, 0 background, objects 1..N."""


def get_style(style: str | SyntheticStyle) -> SyntheticStyle:
    """A style by name (see ``STYLES``) or the style itself.

    Parameters
    ----------
    style
        A key of ``STYLES`` or a ``SyntheticStyle``.

    Returns
    -------
    SyntheticStyle
        The named style, or ``style`` itself.

    Raises
    ------
    InputError
        An unknown name.
    """
    if isinstance(style, SyntheticStyle):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise InputError(f"Unknown synthetic style {style!r}; choose one of {', '.join(STYLES)}.") from None


def random_style(rng: np.random.Generator, base: str | SyntheticStyle = "mixed") -> SyntheticStyle:
    """A random variation of ``base``: density, size, blur, noise and background drawn around it.

    Used for training data, so a model sees a range of appearances rather than one look.

    Parameters
    ----------
    rng
        The source of randomness (seed it for a reproducible style).
    base
        The style varied, by name or itself.

    Returns
    -------
    SyntheticStyle
        ``base`` with object size, coverage, irregular fraction, blur, background
        level, photon count and texture redrawn around its values.

    Raises
    ------
    InputError
        ``base`` is an unknown name.
    """
    base = get_style(base)
    size = rng.uniform(0.6, 1.4)
    lo, hi = base.radius_range
    return dataclasses.replace(
        base,
        radius_range=(max(3.0, lo * size), max(4.0, hi * size)),
        coverage=float(np.clip(base.coverage * rng.uniform(0.4, 1.7), 0.05, 0.6)),
        irregular_fraction=float(rng.uniform(0.0, 1.0)),
        blur_sigma=float(base.blur_sigma * rng.uniform(0.6, 1.6)),
        background_level=float(base.background_level * rng.uniform(0.3, 2.0)),
        photons=float(base.photons * np.exp(rng.uniform(-1.0, 1.0))),
        texture=float(base.texture * rng.uniform(0.3, 1.8)),
    )


# ----------------------------------------------------------------------------- geometry


@dataclass
class _Shape:
    centre: np.ndarray  # (ndim,) pixel coordinates
    radius: float  # mean radius
    inverse_axes: np.ndarray  # (ndim, ndim): x -> object frame, scaled so the surface is |u| = 1
    harmonics: np.ndarray  # (k, 3): order, amplitude, phase (2D only; empty for plain shapes)
    extent: float  # half-size of a box that contains the shape


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    if ndim == 2:
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def _random_shape(
    rng: np.random.Generator, style: SyntheticStyle, centre: np.ndarray, spacing: np.ndarray
) -> _Shape:
    ndim = centre.size
    radius = float(np.exp(rng.uniform(*np.log(style.radius_range))))
    aspect = rng.uniform(*style.aspect_range)
    # semi-axes with geometric mean = radius; 3D: the third axis between the other two
    if ndim == 2:
        semi = np.array([radius * np.sqrt(aspect), radius / np.sqrt(aspect)])
    else:
        middle = rng.uniform(1 / np.sqrt(aspect), np.sqrt(aspect))
        semi = np.array([radius * np.sqrt(aspect), radius * middle, radius / np.sqrt(aspect)])
        semi *= radius / np.prod(semi) ** (1 / 3)
    rotation = _random_rotation(rng, ndim)
    # physical offset = rotation @ (semi * u); u = diag(1/semi) @ rotation.T @ (offset_px * spacing)
    inverse_axes = (rotation / semi).T * spacing
    harmonics = np.zeros((0, 3))
    wobble = 0.0
    if ndim == 2 and rng.random() < style.irregular_fraction:
        orders = np.arange(2, 6)
        amplitudes = style.irregularity * rng.uniform(0.3, 1.0, orders.size) / orders * 2
        phases = rng.uniform(0, 2 * np.pi, orders.size)
        harmonics = np.stack([orders, amplitudes, phases], axis=1)
        wobble = float(amplitudes.sum())
    extent = float(semi.max() * (1 + wobble) / spacing.min()) + 2
    return _Shape(centre, radius, inverse_axes, harmonics, extent)


def _normalised_distance(shape: _Shape, grids: list[np.ndarray]) -> np.ndarray:
    """Radial distance of each pixel in a window, 1.0 on the object's surface (< 1 inside)."""
    offsets = np.stack([g - c for g, c in zip(grids, shape.centre)], axis=-1)
    u = offsets @ shape.inverse_axes.T
    rho = np.sqrt((u**2).sum(axis=-1))
    if len(shape.harmonics):
        theta = np.arctan2(u[..., 1], u[..., 0])
        factor = np.ones_like(rho)
        for order, amplitude, phase in shape.harmonics:
            factor += amplitude * np.cos(order * theta + phase)
        rho = rho / factor
    return rho.astype(np.float32)


def _place_objects(
    rng: np.random.Generator, style: SyntheticStyle, image_shape: tuple[int, ...], spacing: np.ndarray
) -> list[_Shape]:
    """Random shapes at random centres, rejecting those that overlap a neighbour too much."""
    ndim = len(image_shape)
    physical = np.asarray(image_shape) * spacing
    volume = float(np.prod(physical))
    mean_r = float(np.exp(np.mean(np.log(style.radius_range))))
    object_volume = np.pi * mean_r**2 if ndim == 2 else 4 / 3 * np.pi * mean_r**3
    target = max(1, round(style.coverage * volume / object_volume))
    shapes: list[_Shape] = []
    centres = np.zeros((target, ndim))  # physical units, filled as objects are accepted
    radii = np.zeros(target)
    attempts = 0
    while len(shapes) < target and attempts < 4 * target + 20:
        attempts += 1
        centre_px = rng.uniform(0, 1, ndim) * np.asarray(image_shape)
        shape = _random_shape(rng, style, centre_px, spacing)
        n = len(shapes)
        if n:
            distances = np.sqrt(((centres[:n] - centre_px * spacing) ** 2).sum(axis=1))
            if np.any(distances < (1 - style.max_overlap) * (radii[:n] + shape.radius)):
                continue
        centres[n] = centre_px * spacing
        radii[n] = shape.radius
        shapes.append(shape)
    return shapes


def _rasterise(
    shapes: list[_Shape], image_shape: tuple[int, ...], min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact instance labels and each pixel's normalised distance inside its object (inf outside)."""
    from skimage.measure import label as connected_components

    labels = np.zeros(image_shape, dtype=np.int32)
    depth = np.full(image_shape, np.inf, dtype=np.float32)
    windows = []
    for index, shape in enumerate(shapes, start=1):
        lo = np.maximum(np.floor(shape.centre - shape.extent).astype(int), 0)
        hi = np.minimum(np.ceil(shape.centre + shape.extent).astype(int) + 1, image_shape)
        if np.any(hi <= lo):
            windows.append(None)
            continue
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.meshgrid(*[np.arange(a, b) + 0.5 for a, b in zip(lo, hi)], indexing="ij", sparse=True)
        distance = _normalised_distance(shape, [np.broadcast_to(g, tuple(hi - lo)) for g in grids])
        # a pixel belongs to the object it lies deepest inside: overlaps become contact borders
        wins = (distance < 1.0) & (distance < depth[window])
        labels[window][wins] = index
        depth[window][wins] = distance[wins]
        windows.append(window)

    # keep each object's largest connected piece above min_size, renumber 1..N
    final = np.zeros(image_shape, dtype=np.int32)
    next_label = 1
    for index, window in enumerate(windows, start=1):
        if window is None:
            continue
        mine = labels[window] == index
        if mine.sum() < min_size:
            continue
        pieces = connected_components(mine, connectivity=1)
        if pieces.max() > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            mine = pieces == sizes.argmax()
            if mine.sum() < min_size:
                continue
        final[window][mine] = next_label
        next_label += 1
    depth[final == 0] = np.inf
    return final, depth


# ----------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (low-pass filtered white noise)."""
    from skimage.filters import gaussian

    field = gaussian(rng.standard_normal(shape).astype(np.float32), sigma=sigma, preserve_range=True)
    return (field - field.mean()) / (field.std() + 1e-8)


def _background(rng: np.random.Generator, shape: tuple[int, ...], style: SyntheticStyle) -> np.ndarray:
    """Uneven illumination: a random coarse grid smoothly interpolated to full size."""
    from skimage.transform import resize

    coarse = rng.uniform(-1.0, 1.0, tuple(3 for _ in shape))
    field = resize(coarse, shape, order=3, mode="edge", anti_aliasing=False).astype(np.float32)
    return style.background_level * np.clip(1.0 + style.background_variation * field, 0.05, None)


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    depth: np.ndarray,
    style: SyntheticStyle,
    dtype: np.dtype,
    spacing: np.ndarray,
) -> np.ndarray:
    from skimage.filters import gaussian

    n_objects = int(labels.max())
    brightness = np.zeros(n_objects + 1, dtype=np.float32)
    brightness[1:] = rng.uniform(*style.intensity_range, n_objects)
    inside = labels > 0
    profile = np.zeros(labels.shape, dtype=np.float32)
    profile[inside] = 1.0 - style.edge_falloff * depth[inside] ** 2
    texture = 1.0 + style.texture * _smooth_noise(rng, labels.shape, sigma=1.5)
    clean = brightness[labels] * profile * np.clip(texture, 0.2, None)
    if style.blur_sigma > 0:
        # anisotropic volumes: the PSF is the same in physical units
        sigma = style.blur_sigma / spacing * spacing.min()
        clean = gaussian(clean, sigma=tuple(sigma), preserve_range=True).astype(np.float32)
    clean += _background(rng, labels.shape, style)
    counts = rng.poisson(clean * style.photons).astype(np.float32)
    counts += rng.normal(0.0, style.read_noise * style.photons, labels.shape).astype(np.float32)
    if np.dtype(dtype) == np.uint16:
        camera_offset = 100.0
        return np.clip(np.rint(counts + camera_offset), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return (counts / style.photons).astype(np.float32)


def _generate(
    shape: tuple[int, ...],
    seed: int,
    style: str | SyntheticStyle,
    dtype: npt.DTypeLike,
    spacing: tuple[float, ...],
    min_size: int,
) -> SyntheticSample:
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.uint16)):
        raise InputError(f"dtype must be float32 or uint16, got {np.dtype(dtype)}.")
    if any(int(s) < 1 for s in shape):
        raise InputError(f"Shape must be positive, got {shape}.")
    style = get_style(style)
    rng = np.random.default_rng(seed)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    shapes = _place_objects(rng, style, shape, spacing_arr)
    labels, depth = _rasterise(shapes, shape, min_size)
    image = _render(rng, labels, depth, style, np.dtype(dtype), spacing_arr)
    return SyntheticSample(image, labels)


def synthetic_image(
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    style: str | SyntheticStyle = "mixed",
    dtype: npt.DTypeLike = np.float32,
    min_size: int = 12,
) -> SyntheticSample:
    """A 2D fluorescence-like image ``(H, W)`` and its int32 instance labels.

    ``style`` is a name in ``STYLES`` ("mixed", "small_nuclei", "dense_nuclei",
    "cells") or a ``SyntheticStyle``. Objects smaller than ``min_size`` pixels after
    overlap resolution are dropped (left as background). A 2048x2048 image with
    hundreds of objects takes a few seconds.

    Parameters
    ----------
    shape
        (H, W).
    seed
        Everything is deterministic given the seed.
    style
        A name in ``STYLES`` or a ``SyntheticStyle``.
    dtype
        ``float32`` (brightness) or ``uint16`` (photon counts).
    min_size
        Smallest object kept, in pixels.

    Returns
    -------
    SyntheticSample
        ``image`` (H, W) of ``dtype`` and ``labels`` (H, W) int32, objects 1..N.

    Raises
    ------
    InputError
        ``shape`` is not 2D or not positive, ``dtype`` is neither float32 nor
        uint16, or ``style`` is unknown.
    """
    if len(shape) != 2:
        raise InputError(f"synthetic_image makes 2D images; got shape {shape} (use synthetic_volume for 3D).")
    return _generate(tuple(int(s) for s in shape), seed, style, dtype, (1.0, 1.0), min_size)


def synthetic_volume(
    shape: tuple[int, int, int] = (32, 128, 128),
    seed: int = 0,
    style: str | SyntheticStyle = "mixed",
    dtype: npt.DTypeLike = np.float32,
    z_spacing: float = 1.0,
    min_size: int = 30,
) -> SyntheticSample:
    """A 3D volume ``(Z, H, W)`` of ellipsoids and its int32 instance labels.

    ``z_spacing`` is the slice distance in units of the in-plane pixel size
    (e.g. 2.0 for twice-coarser z), so objects look round in physical space.

    Parameters
    ----------
    shape
        (Z, H, W).
    seed
        Everything is deterministic given the seed.
    style
        A name in ``STYLES`` or a ``SyntheticStyle``.
    dtype
        ``float32`` (brightness) or ``uint16`` (photon counts).
    z_spacing
        Slice distance in in-plane pixels.
    min_size
        Smallest object kept, in voxels.

    Returns
    -------
    SyntheticSample
        ``image`` (Z, H, W) of ``dtype`` and ``labels`` (Z, H, W) int32, objects 1..N.

    Raises
    ------
    InputError
        ``shape`` is not 3D or not positive, ``dtype`` is neither float32 nor
        uint16, or ``style`` is unknown.
    """
    if len(shape) != 3:
        raise InputError(f"synthetic_volume makes 3D volumes; got shape {shape}.")
    return _generate(tuple(int(s) for s in shape), seed, style, dtype, (float(z_spacing), 1.0, 1.0), min_size)


# ----------------------------------------------------------------------------- the wide distribution

NOISE_MODELS = ("poisson", "gaussian", "speckle")
"""Noise of a varied image: shot + read noise, additive Gaussian only, or multiplicative (gamma) speckle."""
VARIED_DTYPES = ("float32", "uint16", "uint8")


@dataclass(frozen=True)
class Appearance:
    """How a varied image is rendered beyond its ``SyntheticStyle`` (texture, background extras, noise, file)."""

    texture_sigma: float = 1.5
    """Grain of the texture inside objects, in pixels."""
    spots: float = 0.0
    """Strength of small bright spots (nucleoli, granules) inside objects; 0: none."""
    haze: float = 0.0
    """Out-of-focus haze: smooth unlabelled glow in the background (relative to brightness 1.0)."""
    debris: int = 0
    """Number of small unlabelled specks scattered over the background."""
    noise: str = "poisson"
    """One of ``NOISE_MODELS``."""
    dtype: str = "float32"
    """One of ``VARIED_DTYPES``: the stored image's dtype."""
    scale: float = 1.0
    """Brightness 1.0 becomes this many units of the stored image (above ``offset``); uint8 may saturate."""
    offset: float = 0.0
    """Stored value of brightness 0 (a camera offset)."""


def varied_style(rng: np.random.Generator) -> SyntheticStyle:
    """A style drawn widely: any base style of ``STYLES``, varied further than :func:`random_style` does.

    Parameters
    ----------
    rng
        The source of randomness (seed it for a reproducible style).

    Returns
    -------
    SyntheticStyle
        Shapes, sizes, density, overlap, brightness, edge profile, blur, background and
        noise level all drawn at random.
    """
    base = STYLES[sorted(STYLES)[int(rng.integers(len(STYLES)))]]
    style = random_style(rng, base)
    dimmest = float(rng.uniform(0.25, 0.7))
    return dataclasses.replace(
        style,
        aspect_range=(1.0, float(rng.uniform(1.2, 2.6))),
        irregularity=float(base.irregularity * rng.uniform(0.5, 2.0)),
        max_overlap=float(rng.uniform(0.05, 0.4)),
        intensity_range=(dimmest, float(rng.uniform(dimmest + 0.1, 1.0))),
        edge_falloff=float(rng.uniform(0.0, 0.6)),
        blur_sigma=float(rng.uniform(0.3, 2.5)),
        background_variation=float(rng.uniform(0.0, 0.9)),
        read_noise=float(base.read_noise * np.exp(rng.uniform(-1.0, 1.5))),
    )


def random_appearance(rng: np.random.Generator) -> Appearance:
    """A random :class:`Appearance`: texture grain, spots, haze, debris, noise model, dtype and intensity range.

    Parameters
    ----------
    rng
        The source of randomness (seed it for a reproducible appearance).

    Returns
    -------
    Appearance
        float32 at any scale, uint16 with a camera offset, or uint8 that may be dim or saturated.
    """
    dtype = VARIED_DTYPES[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
    if dtype == "uint8":
        scale, offset = float(np.exp(rng.uniform(np.log(80), np.log(400)))), float(rng.uniform(0, 20))
    elif dtype == "uint16":
        scale, offset = float(np.exp(rng.uniform(np.log(200), np.log(20000)))), float(rng.uniform(0, 1000))
    else:
        scale = float(np.exp(rng.uniform(np.log(0.01), np.log(1000))))
        offset = float(rng.uniform(-0.5, 0.5)) * scale
    return Appearance(
        texture_sigma=float(rng.uniform(0.6, 4.0)),
        spots=float(rng.uniform(0.2, 0.8)) if rng.random() < 0.4 else 0.0,
        haze=float(rng.uniform(0.02, 0.1)) if rng.random() < 0.5 else 0.0,
        debris=int(rng.integers(1, 30)) if rng.random() < 0.4 else 0,
        noise=NOISE_MODELS[int(rng.integers(len(NOISE_MODELS)))],
        dtype=dtype,
        scale=scale,
        offset=offset,
    )


def _noisy(rng: np.random.Generator, signal: np.ndarray, style: SyntheticStyle, model: str) -> np.ndarray:
    """``signal`` (brightness units) with noise of ``model`` (see ``NOISE_MODELS``), float32."""
    read = rng.normal(0.0, style.read_noise, signal.shape).astype(np.float32)
    if model == "poisson":
        return rng.poisson(np.clip(signal, 0, None) * style.photons).astype(np.float32) / style.photons + read
    if model == "gaussian":  # flat noise at the shot-noise level of a mid-bright object
        return signal + read + rng.normal(0.0, np.sqrt(0.4 / style.photons), signal.shape).astype(np.float32)
    shape_k = max(3.0, style.photons / 10)  # speckle: multiplicative gamma noise of mean 1
    return signal * rng.gamma(shape_k, 1 / shape_k, signal.shape).astype(np.float32) + read


def _render_varied(
    rng: np.random.Generator, labels: np.ndarray, depth: np.ndarray, style: SyntheticStyle, look: Appearance
) -> np.ndarray:
    """Render 2D labels with ``style`` and ``look``; the stored image of ``look.dtype``."""
    from skimage.filters import gaussian

    inside = labels > 0
    brightness = np.zeros(int(labels.max()) + 1, dtype=np.float32)
    brightness[1:] = rng.uniform(*style.intensity_range, brightness.size - 1)
    profile = np.zeros(labels.shape, dtype=np.float32)
    profile[inside] = 1.0 - style.edge_falloff * depth[inside] ** 2
    texture = np.clip(1.0 + style.texture * _smooth_noise(rng, labels.shape, look.texture_sigma), 0.2, None)
    clean = brightness[labels] * profile * texture
    if look.spots > 0:  # rare peaks of a fine random field: small bright granules
        granules = np.clip(_smooth_noise(rng, labels.shape, 1.0) - 2.0, 0, None)
        clean += look.spots * brightness[labels] * granules * inside
    if style.blur_sigma > 0:
        clean = gaussian(clean, sigma=style.blur_sigma, preserve_range=True).astype(np.float32)
    signal = clean + _background(rng, labels.shape, style)
    if look.haze > 0:
        glow = np.clip(_smooth_noise(rng, labels.shape, float(rng.uniform(6.0, 20.0))), 0, None)
        signal += look.haze * glow
    if look.debris:
        specks = np.zeros(labels.shape, dtype=np.float32)
        rows = rng.integers(0, labels.shape[0], look.debris)
        cols = rng.integers(0, labels.shape[1], look.debris)
        outside = ~inside[rows, cols]  # debris lies on the background: it is not an object
        specks[rows[outside], cols[outside]] = rng.uniform(2.0, 8.0, look.debris)[outside]
        signal += gaussian(specks, sigma=1.0, preserve_range=True).astype(np.float32)
    stored = look.offset + look.scale * _noisy(rng, signal, style, look.noise)
    if look.dtype == "float32":
        return stored.astype(np.float32)
    top = np.iinfo(np.dtype(look.dtype)).max
    return np.clip(np.rint(stored), 0, top).astype(look.dtype)


def varied_image(shape: tuple[int, int] = (256, 256), seed: int = 0, min_size: int = 12) -> SyntheticSample:
    """A 2D image from the wide distribution (:func:`varied_style`, :func:`random_appearance`) and its labels.

    Parameters
    ----------
    shape
        (H, W).
    seed
        Everything is deterministic given the seed (its own stream: ``synthetic_image``
        with the same seed is a different image).
    min_size
        Smallest object kept, in pixels.

    Returns
    -------
    SyntheticSample
        ``image`` (H, W) of float32, uint16 or uint8 and ``labels`` (H, W) int32, objects 1..N.

    Raises
    ------
    InputError
        ``shape`` is not 2D or not positive.
    """
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise InputError(f"varied_image makes 2D images of positive size; got shape {shape}.")
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng([seed, 8191])
    style = varied_style(rng)
    look = random_appearance(rng)
    spacing = np.ones(2)
    labels, depth = _rasterise(_place_objects(rng, style, shape, spacing), shape, min_size)
    return SyntheticSample(_render_varied(rng, labels, depth, style, look), labels)


class SeededDataset(Sequence):
    """A lazy sequence of ``count`` samples of ``shape``: item ``i`` is ``self.sample(seed + i)``, made on access.

    Nothing is stored, so a training run can use millions of images without memory, and any
    item can be regenerated alone. Subclasses say how one seed becomes a sample.

    Parameters
    ----------
    count
        Number of items.
    shape
        (H, W) of every image.
    seed
        Seed of the first item.
    """

    def __init__(self, count: int, shape: tuple[int, int] = (256, 256), seed: int = 0) -> None:
        self.count = int(count)
        self.shape = tuple(shape)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> SyntheticSample:
        if not -self.count <= index < self.count:
            raise IndexError(index)
        return self.sample(self.seed + index % self.count)

    def sample(self, seed: int) -> SyntheticSample:
        """The sample of ``seed``.

        Parameters
        ----------
        seed
            ``self.seed`` plus the item's index.
        """
        raise NotImplementedError


class SyntheticDataset(SeededDataset):
    """The images of :func:`synthetic_image` (or :func:`varied_image`), one seed per item (``SeededDataset``).

    With ``vary_style`` every image draws its own variation of ``style`` (see
    ``random_style``), seeded by its own seed, so the dataset is deterministic. With ``varied``
    every item is ``varied_image(shape, seed + i)`` instead (``style``, ``vary_style`` and
    ``dtype`` are then not used).
    """

    def __init__(
        self,
        count: int,
        shape: tuple[int, int] = (256, 256),
        seed: int = 0,
        style: str | SyntheticStyle = "mixed",
        vary_style: bool = False,
        dtype: npt.DTypeLike = np.float32,
        varied: bool = False,
    ) -> None:
        super().__init__(count, shape, seed)
        self.style = get_style(style)
        self.vary_style = vary_style
        self.dtype = dtype
        self.varied = bool(varied)

    def style_of(self, index: int) -> SyntheticStyle:
        """The style item ``index`` is drawn with.

        Parameters
        ----------
        index
            A non-negative item index (a negative one is not wrapped here, unlike
            indexing the dataset).

        Returns
        -------
        SyntheticStyle
            ``style``, or with ``vary_style`` its variation seeded by ``seed + index``.
        """
        if not self.vary_style:
            return self.style
        return random_style(np.random.default_rng([self.seed + index, 7919]), self.style)

    def sample(self, seed: int) -> SyntheticSample:
        """The image of ``seed`` (see the class docstring).

        Parameters
        ----------
        seed
            ``self.seed`` plus the item's index.
        """
        if self.varied:
            return varied_image(self.shape, seed)
        return synthetic_image(self.shape, seed, self.style_of(seed - self.seed), self.dtype)


def synthetic_dataset(
    count: int,
    shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    style: str | SyntheticStyle = "mixed",
    vary_style: bool = False,
    dtype: npt.DTypeLike = np.float32,
    varied: bool = False,
) -> list[SyntheticSample]:
    """``count`` 2D samples with seeds ``seed, seed + 1, ...`` (see ``SyntheticDataset``), as a list.

    Parameters
    ----------
    count
        Number of samples.
    shape
        (H, W) of every image.
    seed
        Seed of the first sample.
    style
        A name in ``STYLES`` or a ``SyntheticStyle``.
    vary_style
        Draw a variation of ``style`` per image (see :func:`random_style`).
    dtype
        ``float32`` or ``uint16``.
    varied
        Draw every image from the wide distribution of :func:`varied_image` instead.

    Returns
    -------
    list of SyntheticSample
        All samples, generated now.

    Raises
    ------
    InputError
        As for :func:`synthetic_image`.
    """
    return list(SyntheticDataset(count, shape, seed, style, vary_style, dtype, varied))
