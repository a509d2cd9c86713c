"""Opening images of every backing (numpy, dask, zarr, memory-mapped TIFF, image files)
and reading windows of them without loading the whole image.

Arrays are in napari's frame: (H, W), (H, W, C), (Z, H, W) or (Z, H, W, C); a window
is ``(row0, row1, col0, col1)``, half-open, in pixels of the full image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError

Box = tuple[int, int, int, int]

# files the training folders and readers accept
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def open_image(source: Any) -> Any:
    """An array-like for ``source``: arrays pass through; a path opens lazily.

    Parameters
    ----------
    source
        An array-like (numpy, dask, zarr, memory map: returned as is) or the path of an
        image: ``.zarr`` directories open with zarr (a group: its first array, e.g. level
        "0" of a pyramid); ``.tif/.tiff`` memory-map when the file allows, else read through
        tifffile's zarr store (tiled/compressed TIFFs); ``.npy`` memory-maps; other files
        (PNG, JPEG, ...) are read whole with scikit-image.

    Returns
    -------
    An array-like of the image in napari's frame. A lazily read file comes as an
    :class:`ImageFile`, whose reads name the file when they fail.

    Raises
    ------
    InputError
        The path does not exist, or the file is not a readable image (damaged, truncated,
        not the format its name says).
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = os.fspath(source)
    if not os.path.exists(path):
        raise InputError(f"No such image file: {path}")
    try:
        image = _open_path(path)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # damaged files raise whatever their reader meets first
        raise unreadable(path, error) from error
    if isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
        return image  # read whole already
    return ImageFile(image, path)


def _open_path(path: str):
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


def unreadable(path: str | os.PathLike, error: BaseException) -> InputError:
    """The ``InputError`` for a file that could not be read, naming it and the reader's complaint.

    Parameters
    ----------
    path
        The file.
    error
        What the reader raised.

    Returns
    -------
    InputError
        To raise, with advice on what to check.
    """
    return InputError(
        f"Could not read {os.fspath(path)}: {error}. The file may be damaged or incomplete (a copy cut short?); "
        "check that it opens in another program, or copy it again."
    )


class ImageFile:
    """An image file opened lazily: an array-like whose failed reads raise ``InputError`` naming the file.

    A damaged TIFF or zarr often opens fine and fails only when its damaged part is read;
    this wrapper makes every read (slicing, ``np.asarray``) say which file was at fault.
    ``array`` is the underlying array (zarr, memory map); ``source_path`` the file.
    """

    def __init__(self, array: Any, path: str | os.PathLike):
        self.array = array
        self.source_path = Path(path)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except MemoryError:
            raise
        except Exception as error:
            raise unreadable(self.source_path, error) from error

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageFile({str(self.source_path)!r}, shape={self.shape}, dtype={self.dtype})"


def channels_first_hint(shape: tuple[int, ...]) -> str | None:
    """A hint when a 3D ``shape`` looks like a channels-first image (C <= 4, H, W) rather than a stack.

    Such an array cannot be told apart from a stack of C planes: the caller decides
    whether to refuse it (the predictor, which takes one plane) or to warn and treat it
    as a stack (automatic segmentation, the annotator). Returns None for other shapes.

    Parameters
    ----------
    shape
        The array's shape.

    Returns
    -------
    str or None
        One sentence saying how the array is read and how to pass an RGB image instead.
    """
    if len(shape) != 3 or not (shape[0] <= 4 and shape[1] > 4 and shape[2] > 4):
        return None
    return (
        f"The image of shape {tuple(shape)} has {shape[0]} planes along its first axis and is read as a stack "
        f"of {shape[0]} 2D images; if it is one image with {shape[0]} channels stored channels-first, "
        "move the channels last (np.moveaxis(image, 0, -1); in napari, open it as RGB) to segment it as one image."
    )


def split_channels(shape: tuple[int, ...]) -> tuple[int, bool]:
    """(number of leading stack axes, has channel axis) for an image shape.

    (H, W): 2D; (H, W, C<=4): 2D with channels; (Z, H, W) with W > 4: a stack;
    (Z, H, W, C<=4): a stack with channels.

    Parameters
    ----------
    shape
        The image's shape.

    Returns
    -------
    tuple of (int, bool)
        Leading stack axes (0 or 1) and whether the last axis holds channels.

    Raises
    ------
    InputError
        Any other shape.
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


def read_window(image: Any, window: Box) -> np.ndarray:
    """The pixels of one window as a numpy array (H_w, W_w[, C]).

    A failed read (a damaged chunk or strip) raises ``InputError`` naming the file when the
    image knows it (:class:`ImageFile`) and the window.

    Parameters
    ----------
    image
        A 2D array-like (H, W[, C]) in the (row, col) frame: numpy, dask, zarr, memory map.
    window
        ``(row0, row1, col0, col1)``, half-open pixel bounds.

    Returns
    -------
    numpy.ndarray
        The window's pixels, read now.
    """
    r0, r1, c0, c1 = window
    try:
        return np.asarray(image[r0:r1, c0:c1])
    except (InputError, MemoryError):
        raise
    except Exception as error:
        source = getattr(image, "source_path", None) or "the image"
        raise InputError(f"Could not read rows {r0}:{r1}, columns {c0}:{c1} of {source}: {error}") from error


def read_image_file(path: Path) -> np.ndarray:
    """Read a TIFF (tifffile) or PNG/JPEG (scikit-image) file into a numpy array.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    numpy.ndarray
        Its pixels, as stored.

    Raises
    ------
    InputError
        The file cannot be read (missing, damaged, not an image); the message names it.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from skimage.io import imread

        return np.asarray(imread(path))
    except MemoryError:
        raise
    except Exception as error:  # unreadable/corrupt files: say which one
        raise unreadable(path, error) from error
