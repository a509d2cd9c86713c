"""A cache of SAM image embeddings, one entry per 2D plane of one image, for one model.

Encoding a plane is the slow step of interactive segmentation (seconds on a CPU),
decoding a prompt is fast; so every plane is encoded once and kept. The cache is
an LRU bounded in bytes. It can be saved to a zarr directory and attached again
later (write-through, read on demand), so a large stack is encoded only once,
also across sessions.

Keys are tuples of non-negative ints that name a plane (the caller decides what
they mean, e.g. ``(row_axis, col_axis, z)``). A *fingerprint* (a JSON-able dict:
model, image shape, pixel and encoder digests, ...; see
:func:`napari_sam.engine.predict.fingerprint.cache_fingerprint`) ties a saved cache
to the image and the model it was computed for; attaching a store with another
fingerprint is refused. A store that cannot be read back (a missing, truncated or
corrupt file) is an :class:`InputError` that says to delete it, never a zero embedding.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    from napari_sam.engine.predict.predictor import ImageEmbedding

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: ~250 ViT embeddings (256 x 64 x 64 float32 = 4 MiB each)
_FORMAT = "napari-sam-embeddings"
_FORMAT_VERSION = 1
_HIGH_RES_GROUP = "high_res"  # SAM 2's finer decoder features, one array per plane and level


def embedding_nbytes(embedding: ImageEmbedding) -> int:
    """Memory held by one embedding's features.

    Parameters
    ----------
    embedding
        Any embedding with a ``features`` tensor.

    Returns
    -------
    int
        Bytes of ``embedding.features`` and of SAM 2's ``high_res_features`` (element size times count).
    """
    tensors = (embedding.features, *getattr(embedding, "high_res_features", ()))
    return sum(int(tensor.element_size() * tensor.nelement()) for tensor in tensors)


def _store_name(key: tuple[int, ...]) -> str:
    if not all(isinstance(k, (int, np.integer)) and k >= 0 for k in key):
        raise InputError(f"Embedding cache keys saved to disk must be tuples of non-negative ints, got {key!r}.")
    return "_".join(["plane", *(str(int(k)) for k in key)])


def _key_from_name(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split("_")[1:])


def _jsonable(value: Any) -> Any:
    """Fingerprint values as JSON types (tuples -> lists, numpy scalars -> Python), for comparison with attrs."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _corrupt_store_error(store: Path | None, entry: str | None, cause: object) -> InputError:
    """The error for an unreadable store (``entry``: the plane's array in it): what is broken, what to do."""
    location = store / entry if store is not None and entry else store
    return InputError(
        f"The embedding cache is corrupt: {location} cannot be read ({cause}); "
        f"delete the folder {store} and compute the embeddings again."
    )


class EmbeddingCache:
    """LRU cache ``key -> ImageEmbedding`` bounded by ``max_bytes``, optionally backed by a zarr store.

    Thread-safe: a worker thread may read (e.g. while saving) while the GUI
    thread puts new entries.

    Parameters
    ----------
    max_bytes
        Memory budget for the features held in memory (the store on disk is not counted).
    fingerprint
        JSON-able description of the image and model (see :meth:`set_fingerprint`).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, fingerprint: dict | None = None):
        self.max_bytes = int(max_bytes)
        self.fingerprint = _jsonable(dict(fingerprint or {}))
        self._entries: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.RLock()
        self._store = None  # zarr group when attached
        self.store_path: Path | None = None

    def set_fingerprint(self, fingerprint: dict) -> None:
        """Describe the image and model these embeddings belong to (checked by :meth:`save` / :meth:`load`).

        Parameters
        ----------
        fingerprint
            JSON-able dict, typically from
            :func:`~napari_sam.engine.predict.fingerprint.cache_fingerprint`.
        """
        self.fingerprint = _jsonable(dict(fingerprint))

    # ------------------------------------------------------------ in memory
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries or self._in_store(key)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (the store on disk is not counted)."""
        return self._nbytes

    def keys(self) -> list[Hashable]:
        """Keys held in memory or in the attached store."""
        with self._lock:
            keys = list(self._entries)
            if self._store is not None:
                with self._store_errors():
                    names = list(self._store.array_keys())
                keys += [k for k in (_key_from_name(n) for n in names) if k not in self._entries]
            return keys

    def get(self, key: Hashable, device: Any = None) -> ImageEmbedding | None:
        """The embedding of ``key``, or None. A hit in the attached store is loaded into memory.

        Parameters
        ----------
        key
            The plane's key.
        device
            Where an embedding read from the store is placed (default CPU).

        Returns
        -------
        ImageEmbedding or None
            The embedding, now the most recently used; None when neither memory
            nor the store holds ``key``.

        Raises
        ------
        InputError
            The store's entry for ``key`` is missing data or cannot be read.
        """
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
                return embedding
            if not self._in_store(key):
                return None
            embedding = self._read(key, device)
            self._remember(key, embedding)
            return embedding

    def put(self, key: Hashable, embedding: ImageEmbedding) -> None:
        """Keep ``embedding`` (evicting the least recently used) and write it to the attached store.

        Parameters
        ----------
        key
            The plane's key (a tuple of non-negative ints when a store is attached).
        embedding
            The plane's embedding.

        Raises
        ------
        InputError
            A store is attached and ``key`` holds something other than
            non-negative ints (the embedding is still kept in memory).
        """
        with self._lock:
            self._remember(key, embedding)
            if self._store is not None and not self._in_store(key):
                self._write(key, embedding)

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` in memory (the attached store is left alone).

        Parameters
        ----------
        key
            The plane's key; unknown keys are ignored.
        """
        with self._lock:
            embedding = self._entries.pop(key, None)
            if embedding is not None:
                self._nbytes -= embedding_nbytes(embedding)

    def clear(self) -> None:
        """Forget everything in memory and detach the store (its files stay on disk)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
            self._store = None
            self.store_path = None

    def _remember(self, key: Hashable, embedding: ImageEmbedding) -> None:
        self.discard(key)
        self._entries[key] = embedding
        self._nbytes += embedding_nbytes(embedding)
        # keep at least the newest entry, even if it alone exceeds the budget
        while self._nbytes > self.max_bytes and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self._nbytes -= embedding_nbytes(old)

    # ------------------------------------------------------------- on disk
    def save(self, path: str | Path) -> int:
        """Write every embedding held in memory to a zarr directory and attach it.

        Creates the store, or adds to one saved earlier for the same fingerprint.
        Later :meth:`put` calls are written through.

        Parameters
        ----------
        path
            A zarr directory: new, or saved earlier for the same fingerprint.

        Returns
        -------
        int
            The number of embeddings in the store.

        Raises
        ------
        InputError
            ``path`` exists but is not an embedding cache, or was saved for another
            fingerprint; or a key held in memory holds something other than
            non-negative ints.
        """
        import zarr

        path = Path(path)
        with self._lock:
            if path.exists():
                self._check_fingerprint(path)
                group = zarr.open_group(str(path), mode="a")
            else:
                group = zarr.open_group(str(path), mode="w")
                group.attrs.update(
                    {"format": _FORMAT, "format_version": _FORMAT_VERSION, "fingerprint": self.fingerprint}
                )
            self._store, self.store_path = group, path
            for key, embedding in list(self._entries.items()):
                if not self._in_store(key):
                    self._write(key, embedding)
            return self._count_stored()

    def load(self, path: str | Path) -> int:
        """Attach a store saved by :meth:`save`; its embeddings are read when first asked for.

        Parameters
        ----------
        path
            A zarr directory written by :meth:`save`.

        Returns
        -------
        int
            The number of embeddings available in the store.

        Raises
        ------
        InputError
            The path is not such a store, was saved for another image or model
            (different fingerprint), or its entries cannot be listed (corrupt).
        """
        import zarr

        path = Path(path)
        with self._lock:
            self._check_fingerprint(path)
            group = zarr.open_group(str(path), mode="a")
            previous = self._store, self.store_path
            self._store, self.store_path = group, path
            try:
                return self._count_stored()
            except InputError:
                self._store, self.store_path = previous  # a store that cannot be listed is not attached
                raise

    def _count_stored(self) -> int:
        with self._store_errors():
            return sum(1 for _ in self._store.array_keys())

    @contextlib.contextmanager
    def _store_errors(self, entry: str | None = None) -> Iterator[None]:
        """Turn any failure to read the store (bad JSON, bad compressed bytes, I/O) into a clear InputError."""
        try:
            yield
        except InputError:
            raise
        except Exception as err:  # zarr, numcodecs and json raise many types for one cause: a damaged store
            raise _corrupt_store_error(self.store_path, entry, err) from err

    def _check_fingerprint(self, path: Path) -> None:
        import zarr

        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception as err:  # zarr raises different errors across versions for "not a group"
            raise InputError(f"{path} is not a saved embedding cache (no zarr group there).") from err
        if attrs.get("format") != _FORMAT:
            raise InputError(f"{path} is not a napari-sam embedding cache.")
        saved = attrs.get("fingerprint", {})
        if saved != self.fingerprint:
            differences = sorted(
                k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k)
            )
            details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in differences)
            raise InputError(
                f"The embeddings in {path} were computed for another image or model ({details}). "
                "Choose the matching cache, or compute the embeddings again."
            )

    def _in_store(self, key: Hashable) -> bool:
        if self._store is None or not isinstance(key, tuple):
            return False
        try:
            name = _store_name(key)
        except InputError:
            return False
        with self._store_errors(name):
            return name in self._store

    def _write(self, key: Hashable, embedding: ImageEmbedding) -> None:
        arrays = embedding.to_numpy()
        features = arrays["features"].astype(np.float32, copy=False)
        name = _store_name(key)  # type: ignore[arg-type]
        create = getattr(self._store, "create_array", None) or self._store.create_dataset
        array = create(name, data=features, chunks=features.shape)
        levels = [arrays[f"high_res_{level}"] for level in range(len(embedding.high_res_features))]
        if levels:  # SAM 2: beside the plane, in a group that the listing of planes skips
            group = self._store.require_group(_HIGH_RES_GROUP)
            create_in = getattr(group, "create_array", None) or group.create_dataset
            for level, feature in enumerate(levels):
                data = feature.astype(np.float32, copy=False)
                create_in(f"{name}_{level}", data=data, chunks=data.shape)
        # attributes last: an entry whose high-res levels were not all written reads as corrupt, not as SAM's
        array.attrs.update(
            {
                "original_size": [int(v) for v in arrays["original_size"]],
                "input_size": [int(v) for v in arrays["input_size"]],
                "high_res_levels": len(levels),
            }
        )

    def _read(self, key: Hashable, device=None) -> ImageEmbedding:
        from napari_sam.engine.predict.predictor import ImageEmbedding

        name = _store_name(key)  # type: ignore[arg-type]
        with self._store_errors(name):
            array = self._store[name]
            # zarr hands back its fill value (zeros) for a chunk file that is gone: that is no embedding
            if getattr(array, "nchunks_initialized", array.nchunks) < array.nchunks:
                raise _corrupt_store_error(self.store_path, name, "its data file is missing")
            arrays = {
                "features": np.asarray(array[...]),
                "original_size": np.asarray(array.attrs["original_size"]),
                "input_size": np.asarray(array.attrs["input_size"]),
            }
            for level in range(int(array.attrs.get("high_res_levels", 0))):
                arrays[f"high_res_{level}"] = np.asarray(self._store[_HIGH_RES_GROUP][f"{name}_{level}"][...])
        tensors = [value for key, value in arrays.items() if key not in ("original_size", "input_size")]
        if not all(np.isfinite(value).all() for value in tensors):
            raise _corrupt_store_error(self.store_path, name, "it holds NaN or infinite values")
        return ImageEmbedding.from_numpy(arrays, device=device or "cpu")
