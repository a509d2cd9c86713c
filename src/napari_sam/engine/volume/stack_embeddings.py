"""Embeddings of every plane of a stack: computed once, cached in memory and on disk, resumable.

:class:`StackEmbeddings` ties an :class:`~napari_sam.engine.EmbeddingCache` to one volume, one
axis, one intensity range and one encoder. A plane's embedding is computed the first time it
is asked for (:meth:`StackEmbeddings.get`) and kept; with ``path`` the cache is a zarr store
on disk (one array per plane, written as soon as the plane is encoded), so an interrupted
run keeps every plane it finished and a later run - in this session or another - computes
only the missing ones. :meth:`StackEmbeddings.embed_steps` is the background form: a
generator that encodes the missing planes one by one, yielding progress; closing it cancels
between planes.

Keys are those the annotator uses for a plane: (row_axis, col_axis, index), so a cache
filled here serves clicks in napari and the other way round. The store records a
fingerprint (the volume's shape, dtype and sampled pixels, the encoder's weights, the
intensity range, the axis); a store made for anything else is refused, never silently used.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.embedding_cache import EmbeddingCache
from napari_sam.engine.volume.volumes import VolumeView, check_plane, volume_view

if TYPE_CHECKING:
    from napari_sam.engine.predict.predictor import ImageEmbedding

_IN_MEMORY_PLANES = 64  # planes an in-memory-only cache keeps (LRU), at the model's embedding size


class StackEmbeddings:
    """Per-plane embeddings of one volume along one axis, computed once.

    Parameters
    ----------
    predictor
        Computes the embeddings (``compute_embedding``, ``encoder_fingerprint``, ``config``).
    view
        The volume, axis and intensity range (:func:`~napari_sam.engine.volume.volumes.volume_view`),
        or the volume itself (then seen along ``axis`` with ``intensity_range``).
    cache
        Where embeddings live: None (a new in-memory cache; with ``path``, backed by it), or an
        existing :class:`EmbeddingCache` (e.g. the annotator's for this image), used as is.
    path
        A zarr folder for the embeddings on disk: created when missing, reused (its planes
        not computed again) when it was made for the same volume, model, axis and range.
    max_bytes
        Memory budget of a new cache (default: room for 64 planes).
    axis, intensity_range
        For a volume given as ``view``: as in :func:`~napari_sam.engine.volume.volumes.volume_view`.

    Raises
    ------
    InputError
        ``path`` holds something else (another volume or model, not an embedding cache), or
        its folder cannot be written.
    """

    def __init__(
        self,
        predictor: Any,
        view: VolumeView | Any,
        cache: EmbeddingCache | None = None,
        path: str | os.PathLike | None = None,
        max_bytes: int | None = None,
        *,
        axis: int = 0,
        intensity_range: tuple | None = None,
    ):
        self.predictor = predictor
        self.view = view if isinstance(view, VolumeView) else volume_view(view, axis, intensity_range)
        if cache is None:
            cache = EmbeddingCache(max_bytes or _IN_MEMORY_PLANES * _embedding_bytes(predictor.config))
        self.cache = cache
        self.computed = 0  # planes encoded by this object (the rest came from the cache)
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self._attach(self.path)

    def _attach(self, path: Path) -> None:
        from napari_sam.engine.io.safe_write import check_output_folder
        from napari_sam.engine.predict.fingerprint import cache_fingerprint

        self.cache.set_fingerprint(
            cache_fingerprint(self.view.data, self.predictor, intensity_range=self.view.intensity_range,
                              axis=self.view.axis)
        )
        if path.exists():
            self.cache.load(path)  # refuses another volume's or model's store
            self.cache.save(path)  # and writes what memory holds beyond it
        else:
            check_output_folder(path)
            self.cache.save(path)

    def __contains__(self, plane: int) -> bool:
        return self.view.plane_key(plane) in self.cache

    def missing(self, planes: Any = None) -> list[int]:
        """Planes (of ``planes``, default all) whose embedding is neither in memory nor on disk.

        Parameters
        ----------
        planes
            Plane indices to check; None for every plane.

        Returns
        -------
        list of int
            In the order given.
        """
        planes = range(self.view.n_planes) if planes is None else planes
        return [int(p) for p in planes if self.view.plane_key(p) not in self.cache]

    def get(self, plane: int) -> ImageEmbedding:
        """The embedding of ``plane``: from memory, from disk, or computed now (and kept).

        Parameters
        ----------
        plane
            Index along the view's axis.

        Returns
        -------
        ImageEmbedding
            On the predictor's device.

        Raises
        ------
        InputError
            The plane is out of range, cannot be read, holds NaN, or its stored embedding
            is corrupt (the message says to delete the store).
        """
        plane = check_plane(plane, self.view.n_planes, self.view.axis, "plane")
        key = self.view.plane_key(plane)
        embedding = self.cache.get(key, device=self.predictor.device)
        if embedding is None:
            embedding = self.predictor.compute_embedding(self.view.read(plane), self.view.intensity_range)
            self.cache.put(key, embedding)
            self.computed += 1
        return embedding

    def embed_steps(self, planes: Any = None) -> Generator[tuple[int, int], None, int]:
        """Encode the missing planes one by one, yielding ``(done, total)`` after each.

        Closing the generator (``.close()``, or dropping it) cancels between planes; every
        plane finished so far stays in the cache (on disk with ``path``), so a later call
        continues where this one stopped.

        Parameters
        ----------
        planes
            Plane indices to encode; None for every plane.

        Yields
        ------
        tuple of int
            (planes done, planes in all), counting those cached before as done.

        Returns
        -------
        int
            The number of planes encoded by this call.
        """
        planes = list(range(self.view.n_planes)) if planes is None else [int(p) for p in planes]
        todo = self.missing(planes)
        done = len(planes) - len(todo)
        encoded = 0
        for plane in todo:
            self.get(plane)
            encoded += 1
            done += 1
            yield done, len(planes)
        return encoded


def range_of(cache: Any, intensity_range: tuple | None) -> tuple | None:
    """The intensity range to use with ``cache``: the one given, else a ``StackEmbeddings``' own.

    Parameters
    ----------
    cache
        What the caller passed as ``cache``.
    intensity_range
        What the caller passed as ``intensity_range`` (None: not given).

    Returns
    -------
    tuple or None
        ``intensity_range`` if given; the cache's range for a ``StackEmbeddings``; else None
        (the volume's range is then sampled).
    """
    if intensity_range is None and isinstance(cache, StackEmbeddings):
        return cache.view.intensity_range
    return intensity_range


def _same_range(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return all(np.array_equal(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) for x, y in zip(a, b))


def _describe(value) -> str:
    return "None (uint8 as is)" if value is None else str(tuple(np.asarray(v).tolist() for v in value))


def _embedding_bytes(config: Any) -> int:
    """Bytes of one float32 embedding of a model with ``config``."""
    return 4 * int(config.prompt_embed_dim) * int(config.embedding_size) ** 2


def stack_embeddings(predictor: Any, view: VolumeView, cache: Any = None) -> StackEmbeddings:
    """The :class:`StackEmbeddings` a propagation or 3D segmentation uses for ``cache``.

    Parameters
    ----------
    predictor
        Computes missing embeddings.
    view
        The volume seen along its axis.
    cache
        None (in memory, for this call), a :class:`StackEmbeddings` (must be for the same
        volume and axis), an :class:`EmbeddingCache` (keys as the annotator's), or a path to
        a zarr folder (created or reused).

    Returns
    -------
    StackEmbeddings
        Ready to ``get`` planes.

    Raises
    ------
    InputError
        A :class:`StackEmbeddings` for another volume or axis, another kind of object, or a
        store made for something else.
    """
    if cache is None:
        return StackEmbeddings(predictor, view)
    if isinstance(cache, StackEmbeddings):
        if cache.view.shape != view.shape or cache.view.axis != view.axis or cache.view.data is not view.data:
            raise InputError("The stack embeddings given as cache belong to another volume or axis.")
        if not _same_range(cache.view.intensity_range, view.intensity_range):
            raise InputError(
                f"The stack embeddings given as cache were computed with the intensity range "
                f"{_describe(cache.view.intensity_range)}, not {_describe(view.intensity_range)}: pass the same "
                "intensity_range (or none, to use theirs)."
            )
        return cache
    if isinstance(cache, EmbeddingCache):
        return StackEmbeddings(predictor, view, cache=cache)
    if isinstance(cache, (str, os.PathLike)):
        return StackEmbeddings(predictor, view, path=cache)
    raise InputError(
        f"cache must be None, a StackEmbeddings, an EmbeddingCache or a path to a zarr folder; got {type(cache).__name__}."
    )
