"""A cache of SAM image embeddings, one entry per 2D plane of one image, for one model.

Encoding a plane is the slow step of interactive segmentation (seconds on a CPU),
decoding a prompt is fast; so every plane is encoded once and kept. The cache is
an LRU bounded in bytes. It can be saved to a zarr directory and attached again
later (write-through, read on demand), so a large stack is encoded only once,
also across sessions.

Keys are tuples of non-negative ints that name a plane (the caller decides what
they mean, e.g. ``(row_axis, col_axis, z)``). A *fingerprint* (a JSON-able dict:
model, image shape, intensity range, ...) ties a saved cache to the image and the
model it was computed for; attaching a store with another fingerprint is refused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    from napari_sam.engine.predict.predictor import ImageEmbedding

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: ~250 ViT embeddings (256 x 64 x 64 float32 = 4 MiB each)
_FORMAT = "napari-sam-embeddings"
_FORMAT_VERSION = 1


def embedding_nbytes(embedding: ImageEmbedding) -> int:
    """Memory held by one embedding's features."""
    features = embedding.features
    return int(features.element_size() * features.nelement())


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


class EmbeddingCache:
    """LRU cache ``key -> ImageEmbedding`` bounded by ``max_bytes``, optionally backed by a zarr store.

    Thread-safe: a worker thread may read (e.g. while saving) while the GUI
    thread puts new entries.
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
        """Describe the image and model these embeddings belong to (checked by :meth:`save` / :meth:`load`)."""
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
                keys += [k for k in (_key_from_name(n) for n in self._store.array_keys()) if k not in self._entries]
            return keys

    def get(self, key: Hashable, device=None) -> ImageEmbedding | None:
        """The embedding of ``key``, or None. A hit in the attached store is loaded into memory."""
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
        """Keep ``embedding`` (evicting the least recently used) and write it to the attached store."""
        with self._lock:
            self._remember(key, embedding)
            if self._store is not None and not self._in_store(key):
                self._write(key, embedding)

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` in memory (the attached store is left alone)."""
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
        Later :meth:`put` calls are written through. Returns the number of
        embeddings in the store.
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
            return sum(1 for _ in group.array_keys())

    def load(self, path: str | Path) -> int:
        """Attach a store saved by :meth:`save`; its embeddings are read when first asked for.

        Raises :class:`InputError` when the path is not such a store or was saved
        for another image or model (different fingerprint). Returns the number of
        embeddings available in the store.
        """
        import zarr

        path = Path(path)
        with self._lock:
            self._check_fingerprint(path)
            group = zarr.open_group(str(path), mode="a")
            self._store, self.store_path = group, path
            return sum(1 for _ in group.array_keys())

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
            return _store_name(key) in self._store
        except InputError:
            return False

    def _write(self, key: Hashable, embedding: ImageEmbedding) -> None:
        arrays = embedding.to_numpy()
        features = arrays["features"].astype(np.float32, copy=False)
        name = _store_name(key)  # type: ignore[arg-type]
        create = getattr(self._store, "create_array", None) or self._store.create_dataset
        array = create(name, data=features, chunks=features.shape)
        array.attrs.update(
            {
                "original_size": [int(v) for v in arrays["original_size"]],
                "input_size": [int(v) for v in arrays["input_size"]],
            }
        )

    def _read(self, key: Hashable, device=None) -> ImageEmbedding:
        from napari_sam.engine.predict.predictor import ImageEmbedding

        array = self._store[_store_name(key)]  # type: ignore[index,arg-type]
        arrays = {
            "features": np.asarray(array[...]),
            "original_size": np.asarray(array.attrs["original_size"]),
            "input_size": np.asarray(array.attrs["input_size"]),
        }
        return ImageEmbedding.from_numpy(arrays, device=device or "cpu")
