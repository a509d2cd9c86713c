"""Opening images of every backing (numpy, dask, zarr, memory-mapped TIFF, image files)
and reading windows of them without loading the whole image.

Arrays are in napari's frame: (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C); a window
is ``(row0, row1, col0, col1)``, half-open, in pixels of the full image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_sam.engine.errors import InputError

Box = tuple[int, int, int, int]

# files the training folders and readers accept
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
def open_image(source):
    """An array-like for ``source``: arrays pass through; a path opens lazily.

    ``.zarr`` directories open with zarr (a group: its first array, e.g. level "0"
    of a pyramid); ``.tif/.tiff`` memory-map when the file allows, else read
    through tifffile's zarr store (tiled/compressed TIFFs); ``.npy`` memory-maps.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = os.fspath(source)
    if not os.path.exists(path):
        raise InputError(f"No such image file: {path}")
    lower = path.lower().rstrip("/")
    if lower.endswith(".zarr") or os.path.isdir(path):
        import zarr

        node = zarr.open(path, mode="r")
        if hasattr(node, "shape"):
            return node
        arrays = sorted(node.array_keys())
        if not arrays:
            raise InputError(f"The zarr group {path} holds no arrays.")
        return node[arrays[0]]
    if lower.endswith((".tif", ".tiff")):
        import tifffile

        try:
            return tifffile.memmap(path, mode="r")
        except ValueError:  # compressed or tiled: not memory-mappable
            import zarr

            return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    if lower.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    import skimage.io

    return skimage.io.imread(path)


def split_channels(shape: tuple[int, ...]) -> tuple[int, bool]:
    """(number of leading stack axes, has channel axis) for an image shape.

    (H, W): 2D; (H, W, C<=4): 2D with channels; (Z, H, W) with W > 4: a stack;
    (Z, H, W, C<=4): a stack with channels.
    """
    ndim = len(shape)
    if ndim == 2:
        return 0, False
    if ndim == 3:
        return (0, True) if shape[2] <= 4 else (1, False)
    if ndim == 4 and shape[3] <= 4:
        return 1, True
    raise InputError(
        f"Cannot segment an image of shape {tuple(shape)}: expected (H, W), (H, W, C<=4), (Z, H, W) or (Z, H, W, C<=4)."
    )


def read_window(image, window: Box) -> np.ndarray:
    """The pixels of one window as a numpy array (H_w, W_w[, C])."""
    r0, r1, c0, c1 = window
    return np.asarray(image[r0:r1, c0:c1])


def read_image_file(path: Path) -> np.ndarray:
    """Read a TIFF (tifffile) or PNG/JPEG (scikit-image) file into a numpy array."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from skimage.io import imread

        return np.asarray(imread(path))
    except Exception as error:  # unreadable/corrupt files: say which one
        raise InputError(f"Could not read {path}: {error}") from error
