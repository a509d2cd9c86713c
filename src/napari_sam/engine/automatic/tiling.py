"""Tile grids with halo over images of any size, and per-tile automatic segmentation.

Tile, halo and core (the one description; the API and CLI refer here)
----------------------------------------------------------------------
``tile_shape`` is the size of the WINDOW the model sees: ``tile`` pixels per axis.
The ``halo`` is context INSIDE each window, not added around it: the image plane
(H, W) is cut into CORES of ``tile - 2 * halo`` pixels per axis that partition it
exactly, and each core's window is the core grown by ``halo`` on every side, so
neighbouring windows overlap by ``2 * halo``. At the image border a window is
shifted inwards so that it stays ``tile`` pixels wide whenever the image is (a
window never leaves the image); an axis no longer than ``tile`` is one tile.
Seams (core borders) lie every ``tile - 2 * halo`` pixels, from ``-tile_offset``.

Sizing: for cores of C pixels and a halo of h, use ``tile = C + 2 * h``; the halo
should be at least the diameter of the largest objects (an object is kept from a
window that sees it whole, see ``stitching``); default ``tile // 8``. ``2 * halo``
must be smaller than ``tile``. Example: tile 1024, halo 128 -> cores of 768 px,
windows overlapping by 256 px. Windows are what the model sees; cores decide
ownership of objects (``stitching``).

Images may be numpy arrays, dask arrays, zarr arrays or memory-mapped TIFFs
(``napari_sam.engine.io.images.open_image``); only one window at a time is read.
Intensities are scaled to 8 bits with ONE range for the whole image, estimated from
a subsample (``napari_sam.engine.predict.preprocessing.intensity_range``), never per tile.

All coordinates are (row, col) pixels of the full image; a window or core is
``(row0, row1, col0, col1)``, half-open.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import Box

if TYPE_CHECKING:
    from napari_sam.engine.automatic.diagnostics import FilterReport
    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.predict.predictor import ImageEmbedding, Predictor


@dataclass(frozen=True)
class Tile:
    """One tile: ``index`` in row-major order, ``position`` (grid row, grid col), ``core`` and ``window`` boxes."""

    index: int
    position: tuple[int, int]
    core: Box
    window: Box

    @property
    def window_shape(self) -> tuple[int, int]:
        """(rows, cols) of the window."""
        return self.window[1] - self.window[0], self.window[3] - self.window[2]


@dataclass(frozen=True)
class TileGrid:
    """All tiles of an (H, W) image plane, row-major; ``shape`` is (grid rows, grid cols)."""

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    shape: tuple[int, int]
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def neighbours(self, tile: Tile) -> list[Tile]:
        """Other tiles whose windows overlap ``tile``'s window.

        Parameters
        ----------
        tile
            A tile of this grid.

        Returns
        -------
        list of Tile
            Row-major, without ``tile`` itself.
        """
        rows, cols = self.shape
        i, j = tile.position
        # windows of a grid row share their row span (and a grid column its column span)
        row_spans = [self.tiles[k * cols].window[:2] for k in range(rows)]
        col_spans = [self.tiles[k].window[2:] for k in range(cols)]
        near_rows = [k for k, (a, b) in enumerate(row_spans) if a < tile.window[1] and tile.window[0] < b]
        near_cols = [k for k, (a, b) in enumerate(col_spans) if a < tile.window[3] and tile.window[2] < b]
        return [self.tiles[r * cols + c] for r in near_rows for c in near_cols if (r, c) != (i, j)]


def boxes_intersect(a: Box, b: Box) -> bool:
    """Whether two half-open ``(row0, row1, col0, col1)`` boxes share a pixel.

    Parameters
    ----------
    a, b
        Windows or cores in one frame.

    Returns
    -------
    bool
        False for boxes that only touch along an edge.
    """
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _as_pair(value, name: str) -> tuple[int, int]:
    if np.isscalar(value):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise InputError(f"{name} must be one integer or (rows, cols); got {value}.")
    return value


def _axis_tiles(size: int, tile: int, halo: int, offset: int = 0) -> list[tuple[int, int, int, int]]:
    """(core0, core1, window0, window1) along one axis; core borders at ``k * core - offset``."""
    if size <= tile:  # one window sees the whole axis: a single tile, its core the whole axis
        return [(0, size, 0, size)]
    core = tile - 2 * halo
    offset = offset % core
    borders = [0, *range(core - offset, size, core), size]
    borders = sorted(set(borders))
    spans = []
    for c0, c1 in zip(borders[:-1], borders[1:]):
        # centred on the core, then pushed inside the image: the window keeps the model's full view
        w0 = min(max(c0 - halo, 0), size - tile)
        spans.append((c0, c1, w0, w0 + tile))
    return spans


def make_tile_grid(
    image_shape: Sequence[int],
    tile_shape: int | Sequence[int],
    halo: int | Sequence[int],
    min_tile: int = 1,
    offset: int | Sequence[int] = 0,
) -> TileGrid:
    """The tile grid of an (H, W) plane (windows of ``tile_shape``, cores of ``tile_shape - 2 * halo``,
    see the module docstring); raises ``InputError`` for unusable tile/halo sizes.

    ``offset`` (pixels, one value or (rows, cols)) shifts the seams: core borders lie at
    ``k * core - offset``, so the first core is shorter.

    Parameters
    ----------
    image_shape
        The image's shape; its first two entries are the plane's (H, W).
    tile_shape
        Window size: one value or (rows, cols).
    halo
        Context inside each window: one value or (rows, cols); ``2 * halo < tile_shape``.
    min_tile
        Smallest allowed window side (the model's input size, so it never sees upscaled pixels).
    offset
        Seam shift in pixels: one value or (rows, cols).

    Returns
    -------
    TileGrid
        Tiles row-major, cores partitioning (H, W) exactly.

    Raises
    ------
    InputError
        A tile side is below ``min_tile``, the halo is negative or leaves no core,
        or a size is neither one integer nor a pair.
    """
    h, w = (int(v) for v in image_shape[:2])
    tile = _as_pair(tile_shape, "tile_shape")
    halo = _as_pair(halo, "halo")
    if min(tile) < min_tile:
        raise InputError(
            f"tile_shape {tile} is smaller than the model's input size {min_tile}: the model would only see "
            f"upscaled pixels. Use tile_shape >= {min_tile}."
        )
    if min(halo) < 0:
        raise InputError(f"halo must be >= 0, got {halo}.")
    for axis in (0, 1):
        if 2 * halo[axis] >= tile[axis]:
            raise InputError(
                f"halo {halo[axis]} leaves no core in a tile of {tile[axis]} pixels (2 * halo must be < tile): "
                f"use a halo of at most {max(0, (tile[axis] - 1) // 2)}, typically an object diameter or two."
            )
    offset = _as_pair(offset, "offset")
    rows = _axis_tiles(h, tile[0], halo[0], offset[0])
    cols = _axis_tiles(w, tile[1], halo[1], offset[1])
    tiles = []
    for i, (r0, r1, wr0, wr1) in enumerate(rows):
        for j, (c0, c1, wc0, wc1) in enumerate(cols):
            tiles.append(Tile(len(tiles), (i, j), (r0, r1, c0, c1), (wr0, wr1, wc0, wc1)))
    return TileGrid((h, w), tile, halo, (len(rows), len(cols)), tuple(tiles))


def global_intensity_range(image: Any, has_channels: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """One (low, high) scaling for the whole image from a subsample; None for 8-bit images (used unchanged).

    Raises ``InputError`` when the sample contains NaN or infinite values.

    Parameters
    ----------
    image
        Any array-like (numpy, dask, zarr, memory-mapped TIFF), (..., H, W) or
        (..., H, W, C); only a subsample is read.
    has_channels
        The last axis holds channels: one range per channel.

    Returns
    -------
    tuple of np.ndarray or None
        float64 (low, high), shape (C,) with channels, else (); None for uint8.

    Raises
    ------
    InputError
        The subsample of a float image (its middle plane, for a stack) holds NaN or infinity.
    """
    from napari_sam.engine.predict.preprocessing import _subsample, intensity_range

    dtype = np.dtype(image.dtype)
    if dtype == np.uint8:
        return None
    if dtype.kind == "f":
        probe = image
        while probe.ndim > (3 if has_channels else 2):
            probe = probe[probe.shape[0] // 2]
        # a NaN the sample misses is still caught when its tile is read
        if not np.isfinite(_subsample(probe, 250_000)).all():
            raise InputError("The image contains NaN or infinite values; fill or mask them before segmenting.")
    return intensity_range(image, channel_axis=-1 if has_channels else None)


def window_is_blank(pixels: np.ndarray, intensity_range: tuple | None = None) -> bool:
    """True when a window cannot hold objects: all its pixels are equal, or the whole image is flat.

    SAM would still propose the whole window as an object; skipping also saves the work.

    Parameters
    ----------
    pixels
        (H_w, W_w) or (H_w, W_w, C) window, not empty.
    intensity_range
        The image's (low, high) scaling; ``high <= low`` everywhere means a flat image.

    Returns
    -------
    bool
        True when the window is blank.
    """
    if intensity_range is not None:
        lo, hi = (np.asarray(v, dtype=np.float64) for v in intensity_range)
        if np.all(hi <= lo):
            return True
    flat = pixels.reshape(-1, pixels.shape[2]) if pixels.ndim == 3 else pixels.reshape(-1)
    return bool(np.all(flat == flat[0]))


def embed_windows(
    predictor: Predictor, windows: list[np.ndarray], intensity_range: tuple | None = None
) -> list[ImageEmbedding]:
    """Image embeddings of several windows in one encoder call (one ``ImageEmbedding`` each).

    Parameters
    ----------
    predictor
        Its model encodes; its current embedding is not changed.
    windows
        (H_w, W_w) or (H_w, W_w, C) windows, all of one shape (they are stacked
        into one batch).
    intensity_range
        One (low, high) scaling for every window, as for ``Predictor.compute_embedding``.

    Returns
    -------
    list of ImageEmbedding
        One per window, in order.

    Raises
    ------
    InputError
        A window cannot be used (see :func:`~napari_sam.engine.predict.preprocessing.to_uint8_rgb`).
    """
    import torch

    from napari_sam.engine.predict.predictor import ImageEmbedding
    from napari_sam.engine.predict.preprocessing import (
        image_to_model_input,
        model_input_size,
        to_uint8_rgb,
    )

    if len(windows) == 1 or callable(getattr(predictor.model, "encode_image", None)):  # SAM 2: one at a time
        return [predictor.compute_embedding(window, intensity_range) for window in windows]
    # the same preparation as Predictor.compute_embedding, for several windows in one encoder call
    config, preprocessing = predictor.config, predictor.preprocessing
    rgbs = [to_uint8_rgb(w, intensity_range) for w in windows]
    with torch.inference_mode():
        batch = torch.cat([image_to_model_input(rgb, config, predictor.device, preprocessing) for rgb in rgbs])
        with predictor.autocast():
            features = predictor.model.image_encoder(batch).float()
    return [
        ImageEmbedding(
            features[i : i + 1], tuple(rgb.shape[:2]), model_input_size(rgb.shape[:2], config.img_size, preprocessing)
        )
        for i, rgb in enumerate(rgbs)
    ]


def segment_tile(
    predictor: Predictor,
    pixels: np.ndarray,
    params: AutomaticParams | InstanceParams,
    intensity_range: tuple | None = None,
    window: Box | None = None,
    tile_shape: tuple[int, int] | None = None,
    embedding: ImageEmbedding | None = None,
    report: FilterReport | None = None,
) -> np.ndarray:
    """Automatic segmentation of one window's pixels: (H_w, W_w) int32 labels in the window's frame.

    The settings choose the method: ``AutomaticParams`` generate masks from point prompts,
    ``InstanceParams`` run the model's instance decoder and a seeded watershed
    (:func:`~napari_sam.engine.automatic.instance.segment_instances`; no prompts, no report).
    With ``window`` (its place in the image) and ``tile_shape``, prompts come from one
    lattice fixed to the whole image, ``points_per_side`` per tile side
    (:func:`~napari_sam.engine.automatic.generation.lattice_points`), so they do not
    move when the tile grid moves. A blank window (see :func:`window_is_blank`) gives
    all-background labels without running the model.

    Parameters
    ----------
    predictor
        Runs the model; its current embedding is not changed.
    pixels
        (H_w, W_w) or (H_w, W_w, C) window.
    params
        Settings of mask generation (AMG) or of instance mode.
    intensity_range
        The whole image's (low, high) scaling (see :func:`global_intensity_range`).
    window
        (row0, row1, col0, col1) of the window in the image.
    tile_shape
        The grid's window size; with ``window``, places the prompt lattice.
        Without either, the regular grid over ``pixels`` is used.
    embedding
        The window's precomputed ``ImageEmbedding`` (see :func:`embed_windows`).
    report
        If given, the window's counts per filter are added to it (a blank window adds nothing).

    Returns
    -------
    np.ndarray
        (H_w, W_w) int32 labels, 0 the background.

    Raises
    ------
    InputError
        ``params`` is invalid or the pixels cannot be used.
    """
    from napari_sam.engine.automatic.generation import generate_labels, lattice_points
    from napari_sam.engine.automatic.params import method_of

    if window_is_blank(pixels, intensity_range):
        return np.zeros(pixels.shape[:2], dtype=np.int32)
    if method_of(params) == "instance":
        from napari_sam.engine.automatic.instance import segment_instances

        labels = segment_instances(predictor, pixels, params, intensity_range, embedding=embedding)
        return np.asarray(labels, dtype=np.int32)
    points = coarseness = None
    if window is not None and tile_shape is not None:
        spacing = (tile_shape[0] / params.points_per_side, tile_shape[1] / params.points_per_side)
        points, coarseness = lattice_points(spacing, (window[0], window[2]), pixels.shape[:2])
    return generate_labels(
        predictor, pixels, params, intensity_range, embedding=embedding, points=points, coarseness=coarseness,
        report=report,
    )
