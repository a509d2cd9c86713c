"""A second synthetic microscopy generator, built differently, for VALIDATION ONLY (never for training).

The test fixture is trained on images of :mod:`napari_sam.engine.datasets.synthetic`;
measuring it on images of that same generator says little about how it copes with
what it has not seen. This generator shares no code with it and differs in each step:

* **shapes**: star-convex polygons (a smoothed random radius per angle, rasterised as
  polygons) and packed clusters of cells cut from a Voronoi tessellation, instead of
  ellipses and harmonic blobs;
* **placement and overlaps**: dart throwing with a minimum distance, later objects
  painted over earlier ones (occlusion), and cluster cells separated by thin gaps,
  instead of "deepest inside wins";
* **rendering**: log-normal object brightness, a speckled chromatin texture of
  thresholded noise, a disk-shaped (defocus) blur kernel, a linear illumination ramp
  with vignetting, and heteroscedastic Gaussian noise (variance ``a * signal + b``);
* **storage**: uint8, 12-bit values in uint16, signed int32 around a negative offset,
  or float64 in arbitrary units.

Everything is deterministic given ``seed``; arrays are ``(H, W)`` in napari's pixel
frame, labels int32 with objects 1..N (0 background).
"""

from __future__ import annotations

import numpy as np

from napari_sam.engine.datasets.synthetic import SeededDataset, SyntheticSample
from napari_sam.engine.errors import InputError

STORAGE_KINDS = ("uint8", "uint16_12bit", "int32", "float64")


def _star_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """``(K, 2)`` (row, col) vertices of a star-convex shape: a random radius per angle, circularly smoothed."""
    count = 48
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
    bumps = rng.normal(0.0, rng.uniform(0.05, 0.3), count)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / rng.uniform(1.5, 4.0)) ** 2)
    kernel /= kernel.sum()
    smooth = np.convolve(np.concatenate([bumps[-6:], bumps, bumps[:6]]), kernel, mode="valid")
    stretch = rng.uniform(1.0, 1.9)  # elongation along a random direction
    tilt = rng.uniform(0, np.pi)
    elongation = np.sqrt((stretch * np.cos(angles - tilt)) ** 2 + np.sin(angles - tilt) ** 2) / np.sqrt(stretch)
    radii = radius * np.clip(1.0 + smooth, 0.4, None) * elongation
    return np.stack([centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles)], axis=1)


def _paint_polygons(rng: np.random.Generator, shape: tuple[int, int], canvas: np.ndarray, first_id: int) -> int:
    """Star-convex objects placed by dart throwing and painted in order (later ones occlude); returns the next id.

    They keep clear of what ``canvas`` holds already (the clusters), so no cluster cell is cut into slivers.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.draw import polygon

    clearance = distance_transform_edt(canvas == 0) if canvas.any() else np.full(shape, np.inf)

    area = shape[0] * shape[1]
    radius_range = np.sort(rng.uniform(4.0, 26.0, 2)) + np.array([0.0, 3.0])
    mean_radius = float(np.mean(radius_range))
    wanted = max(1, int(rng.uniform(0.08, 0.45) * area / (np.pi * mean_radius**2)))
    spacing = rng.uniform(0.8, 1.6)  # minimum centre distance, in mean radii (below 2: objects may overlap)
    centres: list[np.ndarray] = []
    next_id = first_id
    for _ in range(6 * wanted):
        if len(centres) >= wanted:
            break
        centre = rng.uniform(0, 1, 2) * np.asarray(shape)
        radius = float(rng.uniform(*radius_range))
        if centres and np.min(np.hypot(*(np.asarray(centres) - centre).T)) < spacing * mean_radius:
            continue
        if clearance[min(int(centre[0]), shape[0] - 1), min(int(centre[1]), shape[1] - 1)] < 2 * radius:
            continue
        centres.append(centre)
        vertices = _star_polygon(rng, centre, radius)
        rows, cols = polygon(vertices[:, 0], vertices[:, 1], shape=shape)
        canvas[rows, cols] = next_id
        next_id += 1
    return next_id


def _paint_cluster(rng: np.random.Generator, shape: tuple[int, int], canvas: np.ndarray, first_id: int) -> int:
    """A packed cluster, like an epithelium: Voronoi cells of evenly spread seeds (dart throwing) inside a
    round region, split by 1-2 pixel gaps; cells cut to a sliver by the region's edge are left out."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial import cKDTree

    centre = rng.uniform(0.2, 0.8, 2) * np.asarray(shape)
    extent = rng.uniform(0.15, 0.35) * min(shape)
    cell = rng.uniform(8.0, 16.0)  # typical cell radius
    seeds: list[np.ndarray] = []
    for _ in range(400):
        seed = centre + rng.uniform(-1, 1, 2) * extent
        if np.hypot(*(seed - centre)) < extent and (
            not seeds or np.min(np.hypot(*(np.asarray(seeds) - seed).T)) > 1.6 * cell
        ):
            seeds.append(seed)
    if len(seeds) < 2:
        return first_id
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    pixels = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    distance, owner = cKDTree(np.asarray(seeds)).query(pixels)
    owner = owner.reshape(shape)
    region = (np.hypot(rows - centre[0], cols - centre[1]) < extent) & (distance.reshape(shape) < 1.3 * cell)
    gap = int(rng.integers(1, 3))
    smallest = 0.35 * np.pi * cell**2
    next_id = first_id
    for index in range(len(seeds)):
        mine = binary_erosion((owner == index) & region, iterations=gap)
        if mine.sum() >= smallest:
            canvas[mine] = next_id
            next_id += 1
    return next_id


def _clean_labels(canvas: np.ndarray, min_size: int) -> np.ndarray:
    """Each id's largest connected piece of at least ``min_size`` pixels, renumbered 1..N."""
    from scipy.ndimage import find_objects
    from scipy.ndimage import label as connected

    labels = np.zeros(canvas.shape, dtype=np.int32)
    next_id = 1
    for object_id, box in enumerate(find_objects(canvas), start=1):
        if box is None:
            continue
        pieces, count = connected(canvas[box] == object_id)
        if count == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        if sizes.max() < min_size:
            continue
        labels[box][pieces == 1 + int(sizes.argmax())] = next_id
        next_id += 1
    return labels


def _disk_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Convolution with a uniform disk (defocus), via FFT; edges are reflected."""
    if radius < 0.5:
        return image
    from scipy.signal import fftconvolve

    size = int(np.ceil(radius))
    rows, cols = np.mgrid[-size : size + 1, -size : size + 1]
    kernel = (np.hypot(rows, cols) <= radius).astype(np.float64)
    kernel /= kernel.sum()
    padded = np.pad(image, size, mode="reflect")
    return fftconvolve(padded, kernel, mode="same")[size:-size, size:-size]


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Chromatin-like texture in [0, 1]: a box-filtered random field, thresholded softly."""
    from scipy.ndimage import uniform_filter

    field = uniform_filter(rng.random(shape), size=int(rng.integers(2, 5)))
    field = (field - field.mean()) / (field.std() + 1e-9)
    return 1.0 / (1.0 + np.exp(-2.0 * (field - rng.uniform(-0.5, 1.0))))


def _rim(labels: np.ndarray, strength: float, width: float) -> np.ndarray:
    """A darker rim inside every object (nuclear envelope): 1 - strength * exp(-distance to its edge / width)."""
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    depth = distance_transform_edt(~find_boundaries(labels, mode="inner"))
    return np.where(labels > 0, 1 - strength * np.exp(-depth / width), 1.0)


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Labels -> float64 signal (arbitrary units, background around 0.05-0.3) with noise."""
    shape = labels.shape
    brightness = np.concatenate([[0.0], rng.lognormal(0.0, rng.uniform(0.1, 0.5), int(labels.max()))])
    brightness /= max(brightness.max(), 1e-9)
    brightness[1:] = 0.3 + 0.7 * brightness[1:]
    chromatin = rng.uniform(0.0, 0.6)
    signal = brightness[labels] * ((1 - chromatin) + chromatin * _speckle(rng, shape))
    signal *= _rim(labels, float(rng.uniform(0.2, 0.5)), float(rng.uniform(1.0, 3.0)))
    signal = _disk_blur(signal, float(rng.uniform(0.0, 3.0)))
    rows, cols = np.mgrid[: shape[0], : shape[1]] / max(shape)
    ramp = rng.uniform(-1, 1, 2)
    background = rng.uniform(0.03, 0.25) * (1 + 0.5 * (ramp[0] * (rows - 0.5) + ramp[1] * (cols - 0.5)))
    vignette = 1 - rng.uniform(0.0, 0.4) * (np.hypot(rows - 0.5, cols - 0.5) / 0.7) ** 2
    signal = (signal + background) * vignette
    variance = rng.uniform(0.0005, 0.01) * np.clip(signal, 0, None) + rng.uniform(0.00002, 0.0005)
    return signal + rng.standard_normal(shape) * np.sqrt(variance)


def _store(rng: np.random.Generator, signal: np.ndarray, kind: str) -> np.ndarray:
    """The signal as ``kind`` (see ``STORAGE_KINDS``) with a random gain and offset."""
    if kind == "uint8":
        return np.clip(np.rint(rng.uniform(120, 300) * signal + rng.uniform(0, 15)), 0, 255).astype(np.uint8)
    if kind == "uint16_12bit":
        return np.clip(np.rint(rng.uniform(1500, 4500) * signal + rng.uniform(50, 300)), 0, 4095).astype(np.uint16)
    if kind == "int32":
        return np.rint(rng.uniform(1e3, 1e6) * signal - rng.uniform(1e3, 1e5)).astype(np.int32)
    return rng.uniform(1e-3, 1e3) * signal + rng.uniform(-10, 10)


def validation_image(shape: tuple[int, int] = (256, 256), seed: int = 0, min_size: int = 12) -> SyntheticSample:
    """One validation image ``(H, W)`` and its int32 instance labels (see the module docstring).

    Parameters
    ----------
    shape
        (H, W).
    seed
        Everything is deterministic given the seed.
    min_size
        Smallest object kept (its largest visible piece), in pixels.

    Returns
    -------
    SyntheticSample
        ``image`` (H, W) of uint8, uint16 (12-bit values), int32 or float64, and
        ``labels`` (H, W) int32, objects 1..N.

    Raises
    ------
    InputError
        ``shape`` is not 2D or not positive.
    """
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise InputError(f"validation_image makes 2D images of positive size; got shape {shape}.")
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng([seed, 524287])
    canvas = np.zeros(shape, dtype=np.int64)
    next_id = 1
    clusters = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
    for _ in range(clusters):  # clusters first: loose polygons may lie over their edges
        next_id = _paint_cluster(rng, shape, canvas, next_id)
    _paint_polygons(rng, shape, canvas, next_id)
    labels = _clean_labels(canvas, min_size)
    kind = STORAGE_KINDS[int(rng.integers(len(STORAGE_KINDS)))]
    return SyntheticSample(_store(rng, _render(rng, labels), kind), labels)


class ValidationDataset(SeededDataset):
    """``ValidationDataset(count, shape, seed)``: item ``i`` is ``validation_image(shape, seed + i)``, made on access."""

    def sample(self, seed: int) -> SyntheticSample:
        """``validation_image(self.shape, seed)``.

        Parameters
        ----------
        seed
            ``self.seed`` plus the item's index.
        """
        return validation_image(self.shape, seed)


__all__ = ["STORAGE_KINDS", "ValidationDataset", "validation_image"]
