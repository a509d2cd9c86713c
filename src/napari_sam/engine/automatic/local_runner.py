"""Running tiles in this process, in tile order (the default when there is no Dask scheduler).

torch already uses every core for one window, so tiles run one after another; on a GPU
several windows share one image-encoder call (``encoder_batch``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.automatic.diagnostics import FilterReport
from napari_sam.engine.automatic.params import AutomaticParams
from napari_sam.engine.automatic.tiling import (
    Tile,
    TileGrid,
    embed_windows,
    segment_tile,
    window_is_blank,
)
from napari_sam.engine.io.images import read_window

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.predict.predictor import Predictor


def default_encoder_batch(device: torch.device | str) -> int:
    """Windows per image-encoder call: batches pay off on GPUs; on a CPU one window already fills every core.

    Parameters
    ----------
    device
        The predictor's device.

    Returns
    -------
    int
        1 on a CPU, 4 elsewhere.
    """
    return 1 if str(device).startswith("cpu") else 4


class LocalTileRunner:
    """Runs tile tasks here in tile order, ``encoder_batch`` windows per image-encoder call.

    The same interface as :class:`~napari_sam.engine.automatic.dask_runner.DaskTileRunner`:
    a context manager whose :meth:`iter_tile_labels` yields ``(tile index, labels)``.
    """

    def __init__(self, predictor: Predictor, encoder_batch: int = 1):
        self.predictor = predictor
        self.encoder_batch = max(1, int(encoder_batch))

    def __enter__(self) -> LocalTileRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def iter_tile_labels(
        self,
        image: Any,
        grid: TileGrid,
        params: AutomaticParams | InstanceParams,
        intensity_range: tuple | None = None,
        tiles: Iterable[Tile] | None = None,
        report: FilterReport | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(tile index, (H_w, W_w) int32 labels in the window frame)`` for ``tiles``
        (default: every tile of ``grid``) of a 2D array-like ``image`` (H, W[, C]), in tile order.

        Parameters
        ----------
        image
            2D array-like (H, W) or (H, W, C); one window is read at a time.
        grid
            The tile grid over ``image``.
        params
            ``AutomaticParams`` (mask generation) or ``InstanceParams`` (instance mode): the method
            (:func:`~napari_sam.engine.automatic.tiling.segment_tile`).
        intensity_range
            The whole image's (low, high) scaling
            (:func:`~napari_sam.engine.automatic.tiling.global_intensity_range`).
        tiles
            The tiles to run, in this order; None: every tile of ``grid``.
        report
            If given, each tile's counts per filter are added to it.

        Yields
        ------
        index : int
            The tile's index.
        labels : np.ndarray
            (H_w, W_w) int32 labels of its window, 0 the background.
        """
        pending: list[tuple[Tile, np.ndarray]] = []
        for tile in grid if tiles is None else tiles:
            pending.append((tile, read_window(image, tile.window)))
            if len(pending) >= self.encoder_batch:
                yield from self._segment(pending, grid, params, intensity_range, report)
                pending = []
        if pending:
            yield from self._segment(pending, grid, params, intensity_range, report)

    def _segment(self, pending, grid: TileGrid, params: AutomaticParams | InstanceParams, intensity_range, report):
        """Embed the non-blank windows of ``pending`` in one encoder call, then segment each."""
        busy = [(tile, pixels) for tile, pixels in pending if not window_is_blank(pixels, intensity_range)]
        embeddings = embed_windows(self.predictor, [p for _, p in busy], intensity_range) if busy else []
        by_index = {tile.index: e for (tile, _), e in zip(busy, embeddings)}
        for tile, pixels in pending:
            yield tile.index, segment_tile(
                self.predictor, pixels, params, intensity_range, tile.window, grid.tile_shape,
                embedding=by_index.get(tile.index), report=report,
            )
