"""Creating label outputs: in memory, as zarr or as a memory-mapped TIFF."""

from __future__ import annotations

import os

import numpy as np

from napari_sam.engine.errors import InputError


def create_output(out, shape: tuple[int, ...], chunks: tuple[int, ...] | None = None):
    """A zero-filled int32 label array: numpy (``out`` None), a new zarr (``*.zarr``) or TIFF (``*.tif``) on
    disk, or ``out`` itself when it is an array of the right shape."""
    if out is None:
        return np.zeros(shape, dtype=np.int32)
    if isinstance(out, (str, os.PathLike)):
        path = os.fspath(out)
        lower = path.lower().rstrip("/")
        if lower.endswith(".zarr"):
            import zarr

            chunks = chunks or tuple([1] * (len(shape) - 2) + [min(1024, s) for s in shape[-2:]])
            return zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype=np.int32, fill_value=0)
        if lower.endswith((".tif", ".tiff")):
            import tifffile

            # uncompressed and memory-mapped: written in place, never held whole in memory
            big = int(np.prod(shape)) * 4 > 2**31
            return tifffile.memmap(path, shape=shape, dtype=np.int32, bigtiff=big)
        raise InputError(f"Cannot write labels to {path!r}: use a path ending in .zarr, .tif or .tiff.")
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"out has shape {tuple(out.shape)}, but the labels have shape {tuple(shape)}.")
    return out
