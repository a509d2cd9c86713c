"""Running tiles as independent tasks on a Dask cluster.

Each tile's task takes the window's pixels and returns its label image (window
frame). Given a ``dask.distributed`` scheduler address (or a ``Client``), tasks run
on the cluster's workers; the model is shipped once per worker by a worker plugin,
which builds it there and keeps it for all tasks. (Without a scheduler,
``segment_everything`` runs the same tasks in this process (``local_runner``), where
torch already uses every core for one tile; this module, and the ``distributed``
package, are then never imported.)

The driver reads windows and stitches results, keeping at most ``max_in_flight``
tasks submitted at a time, so memory stays bounded however many tiles there are.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import Client, WorkerPlugin, as_completed, get_worker

from napari_sam.engine.automatic.tiling import Tile, TileGrid, segment_tile
from napari_sam.engine.io.images import read_window

if TYPE_CHECKING:
    import torch
    from distributed import Worker

    from napari_sam.engine.automatic.diagnostics import FilterReport
    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.automatic.params import AutomaticParams


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to rebuild the model: a zoo name / checkpoint path, or a config and state dict."""

    name_or_path: str | None = None
    config: object | None = None
    state_dict: dict | None = None

    @classmethod
    def from_model(cls, model: str | os.PathLike | torch.nn.Module) -> ModelSpec:
        """The spec of a model name, a checkpoint path or a built model.

        Parameters
        ----------
        model
            A zoo name or checkpoint path (each worker loads it), or a SAM / SAM 2 module
            (its config and a CPU copy of its state dict are shipped).

        Returns
        -------
        ModelSpec
            A picklable description of the model.
        """
        if isinstance(model, str) or hasattr(model, "__fspath__"):
            return cls(name_or_path=str(model))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(config=model.config, state_dict=state)

    def build(self) -> torch.nn.Module:
        """The model, on the CPU: loaded by name or path, or built from config and state dict."""
        from napari_sam.model import load_model
        from napari_sam.model.checkpoint import build_model

        if self.name_or_path is not None:
            return load_model(self.name_or_path, device="cpu", progress=False)
        model = build_model(self.config)  # SAM or SAM 2, from the config's family
        model.load_state_dict(self.state_dict)
        return model.eval()


class SamWorkerPlugin(WorkerPlugin):
    """Dask worker plugin: builds the predictor once when a worker starts (or joins)."""

    def __init__(self, spec: ModelSpec, device: str | None, precision: str):
        self.spec = spec
        self.device = device
        self.precision = precision
        self.predictor = None

    def setup(self, worker: Worker) -> None:
        """Build the predictor on ``worker``, torch using as many threads as the worker has.

        Parameters
        ----------
        worker
            The Dask worker this plugin is registered on.
        """
        import torch

        from napari_sam.engine.predict.predictor import Predictor

        threads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", None)
        if threads:
            torch.set_num_threads(int(threads))
        self.predictor = Predictor(self.spec.build(), device=self.device, precision=self.precision)

    def teardown(self, worker: Worker) -> None:
        """Drop the predictor when the worker closes.

        Parameters
        ----------
        worker
            The Dask worker this plugin is registered on.
        """
        self.predictor = None


def _segment_on_worker(plugin_name: str, pixels: np.ndarray, params, intensity_range, window, tile_shape):
    """The tile's compacted labels and its :class:`FilterReport` (small: counts and two histograms)."""
    from napari_sam.engine.automatic.diagnostics import FilterReport

    predictor = get_worker().plugins[plugin_name].predictor
    report = FilterReport()
    labels = segment_tile(predictor, pixels, params, intensity_range, window, tile_shape, report=report)
    return _compact(labels), report


def _compact(labels: np.ndarray) -> np.ndarray:
    """Smaller dtype for the trip back to the driver (tiles rarely hold 65535 objects)."""
    return labels.astype(np.uint16) if labels.max() < np.iinfo(np.uint16).max else labels


class DaskTileRunner:
    """Runs tile tasks on a ``dask.distributed`` cluster; a context manager around one connection.

    ``scheduler`` is an address string (``tcp://host:8786``) or a ``Client``. Entering
    registers the worker plugin (the model goes to each worker once), leaving removes
    it and closes a client this runner opened.
    """

    def __init__(self, scheduler: str | Client, model: str | os.PathLike | torch.nn.Module,
                 device: str | None = None, precision: str = "auto", max_in_flight: int | None = None):
        self.scheduler = scheduler
        self.spec = ModelSpec.from_model(model)
        self.device, self.precision = device, precision
        self.max_in_flight = max_in_flight
        self.client = None
        self.plugin_name = f"napari-sam-{uuid.uuid4().hex[:12]}"
        self._own_client = False
        self._registered = False

    def __enter__(self) -> DaskTileRunner:
        self._own_client = not isinstance(self.scheduler, Client)
        self.client = Client(self.scheduler) if self._own_client else self.scheduler
        try:
            plugin = SamWorkerPlugin(self.spec, self.device, self.precision)
            self.client.register_plugin(plugin, name=self.plugin_name)
            self._registered = True
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._registered:
            self.client.unregister_worker_plugin(self.plugin_name)
            self._registered = False
        if self._own_client and self.client is not None:
            self.client.close()
        self.client = None

    def iter_tile_labels(
        self,
        image: Any,
        grid: TileGrid,
        params: AutomaticParams | InstanceParams,
        intensity_range: tuple | None = None,
        tiles: Iterable[Tile] | None = None,
        report: FilterReport | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(tile index, labels in the window frame)`` for ``tiles`` (default: every tile of
        ``grid``) of a 2D array-like ``image`` (H, W[, C]), in completion order. At most
        ``max_in_flight`` tiles (default: two per worker, plus two) are submitted at a time, so the
        driver holds a bounded number of windows.

        Parameters
        ----------
        image
            2D array-like (H, W) or (H, W, C), read here one window at a time; the
            windows' pixels are sent to the workers.
        grid
            The tile grid over ``image``.
        params
            ``AutomaticParams`` (mask generation) or ``InstanceParams`` (instance mode): the method
            (:func:`~napari_sam.engine.automatic.tiling.segment_tile`).
        intensity_range
            The whole image's (low, high) scaling.
        tiles
            The tiles to run; None: every tile of ``grid``.
        report
            If given, each tile's counts per filter (computed on the workers) are added to it.

        Yields
        ------
        index : int
            The tile's index.
        labels : np.ndarray
            (H_w, W_w) labels of its window, 0 the background: uint16 when the tile's
            largest label is below 65535 (smaller to send back), else int32.
        """
        client = self.client
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = self.max_in_flight or 2 * workers + 2
        tiles = iter(grid if tiles is None else tiles)
        futures = as_completed()
        index_of = {}

        def submit_next() -> bool:
            tile = next(tiles, None)
            if tile is None:
                return False
            pixels = read_window(image, tile.window)
            future = client.submit(
                _segment_on_worker,
                self.plugin_name,
                pixels,
                params,
                intensity_range,
                tile.window,
                grid.tile_shape,
                pure=False,
            )
            index_of[future.key] = tile.index
            futures.add(future)
            return True

        for _ in range(limit):
            if not submit_next():
                break
        for future in futures:
            labels, tile_report = future.result()
            if report is not None:
                report.merge(tile_report)
            index = index_of.pop(future.key)
            future.release()
            submit_next()
            yield index, labels
