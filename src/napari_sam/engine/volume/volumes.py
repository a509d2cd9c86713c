"""Reading a volume or time series one plane at a time, with one intensity range for all planes.

A volume is (Z, Y, X) or (Z, Y, X, C) with C <= 4 (channels last), numpy, dask, zarr or a
memory-mapped TIFF, any numeric dtype. ``axis`` names the spatial axis planes are taken
along (0, 1 or 2, or negative); a plane is the 2D image (rows, cols[, C]) of the other two
spatial axes in their order. A plane is read when it is needed and never the whole volume,
so lazy volumes larger than memory work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import open_image


@dataclass(frozen=True)
class VolumeView:
    """One volume seen as a sequence of planes along ``axis``.

    ``data``: the array (not read); ``shape``: its spatial (3,) shape; ``axis``: the spatial
    axis planes are taken along, normalised to 0..2; ``has_channels``: a trailing channel
    axis; ``intensity_range``: (low, high) used for every plane (None for uint8, used as is).
    """

    data: Any
    shape: tuple[int, int, int]
    axis: int
    has_channels: bool
    intensity_range: tuple | None

    @property
    def n_planes(self) -> int:
        """Number of planes along ``axis``."""
        return self.shape[self.axis]

    @property
    def plane_axes(self) -> tuple[int, int]:
        """The spatial axes (rows, cols) of a plane, in the volume's order."""
        return tuple(a for a in range(3) if a != self.axis)  # type: ignore[return-value]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, cols) of one plane."""
        return tuple(self.shape[a] for a in self.plane_axes)  # type: ignore[return-value]

    def index(self, plane: int) -> tuple:
        """The index that picks ``plane`` out of a (spatial-shaped) array.

        Parameters
        ----------
        plane
            Index along ``axis``.

        Returns
        -------
        tuple
            ``(slice(None),) * axis + (plane,)``.
        """
        return (slice(None),) * self.axis + (int(plane),)

    def plane_key(self, plane: int) -> tuple[int, ...]:
        """Embedding-cache key of ``plane``: (row_axis, col_axis, index), as the annotator names planes.

        Parameters
        ----------
        plane
            Index along ``axis``.

        Returns
        -------
        tuple of int
            The key.
        """
        return (*self.plane_axes, int(plane))

    def read(self, plane: int) -> np.ndarray:
        """The pixels of ``plane`` (rows, cols[, C]), read now; ``InputError`` for NaN or infinity.

        Parameters
        ----------
        plane
            Index along ``axis``, 0 <= plane < ``n_planes``.

        Returns
        -------
        np.ndarray
            The plane as numpy, channels last.

        Raises
        ------
        InputError
            The plane is out of range, cannot be read, or a float plane holds NaN or infinity.
        """
        check_plane(plane, self.n_planes, self.axis, "plane")
        try:
            pixels = np.asarray(self.data[self.index(plane)])
        except (InputError, MemoryError):
            raise
        except Exception as error:  # a damaged chunk of a lazy volume
            raise InputError(f"Could not read plane {plane} along axis {self.axis} of the volume: {error}") from error
        if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
            raise InputError(
                f"Plane {plane} along axis {self.axis} contains NaN or infinite values; fill or mask them "
                "(e.g. np.nan_to_num(volume)) before segmenting."
            )
        return pixels


def check_plane(plane: Any, n_planes: int, axis: int, what: str = "seed_plane") -> int:
    """``plane`` as an int, checked to lie in 0..n_planes-1.

    Parameters
    ----------
    plane
        The index to check (an integer; numpy integers are accepted).
    n_planes
        Planes along ``axis``.
    axis
        The axis, named in the message.
    what
        The argument's name, for the message.

    Returns
    -------
    int
        The index.

    Raises
    ------
    InputError
        Not an integer, or out of range.
    """
    if isinstance(plane, bool) or not isinstance(plane, (int, np.integer)):
        raise InputError(f"{what} must be an integer plane index, got {plane!r}.")
    if not 0 <= int(plane) < n_planes:
        raise InputError(
            f"{what} {int(plane)} is out of range: the volume has {n_planes} planes along axis {axis} "
            f"(0 to {n_planes - 1})."
        )
    return int(plane)


def volume_view(volume: Any, axis: int = 0, intensity_range: tuple | None = None) -> VolumeView:
    """Check ``volume`` and ``axis``, and fix one intensity range for all planes.

    Parameters
    ----------
    volume
        (Z, Y, X) or (Z, Y, X, C<=4) array-like (numpy, dask, zarr, memory map) or a path
        ``open_image`` opens lazily.
    axis
        The spatial axis planes are taken along: 0, 1, 2 or -3..-1.
    intensity_range
        (low, high) intensities mapped to 0-255 in every plane (e.g. a CT window); None: one
        robust range sampled from a few planes of the whole volume (never per plane).
        uint8 volumes are used unchanged when None.

    Returns
    -------
    VolumeView
        The checked view; nothing but a small sample is read.

    Raises
    ------
    InputError
        Not a volume (a 2D image, other dimensions), empty, a non-numeric dtype, an axis that
        does not exist, a bad ``intensity_range``, or NaN in the sampled planes.
    """
    volume = open_image(volume)
    shape = tuple(int(s) for s in getattr(volume, "shape", ()))
    ndim = len(shape)
    has_channels = ndim == 4 and shape[3] <= 4
    if ndim == 2 or (ndim == 3 and shape[2] <= 4):
        raise InputError(
            f"Expected a volume or time series of shape (Z, Y, X) or (Z, Y, X, C), got a 2D image of shape {shape}. "
            "Propagation and 3D segmentation need a stack of planes; for one image use Predictor.predict or "
            "segment_everything."
        )
    if ndim not in (3, 4) or (ndim == 4 and not has_channels):
        raise InputError(
            f"Expected a volume of shape (Z, Y, X) or (Z, Y, X, C) with C <= 4, got shape {shape}. "
            "Pass one 3D volume (e.g. volume[t] of a 4D series) or move the channels last."
        )
    if any(s == 0 for s in shape):
        raise InputError(f"The volume is empty (shape {shape}).")
    if np.dtype(volume.dtype).kind not in "biuf":
        raise InputError(f"Unsupported volume dtype {volume.dtype}; expected numbers or booleans.")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= int(axis) <= 2:
        raise InputError(
            f"axis {axis!r} does not exist: a volume of shape {shape} has spatial axes 0, 1 and 2 (or -3, -2, -1)"
            + (" ; the last axis holds channels." if has_channels else ".")
        )
    axis = int(axis) % 3
    if intensity_range is None:
        from napari_sam.engine.automatic.tiling import global_intensity_range

        intensity_range = global_intensity_range(volume, has_channels)
    else:
        intensity_range = _checked_range(intensity_range)
    return VolumeView(volume, shape[:3], axis, has_channels, intensity_range)


def _checked_range(value: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        low, high = (np.asarray(v, dtype=np.float64) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"intensity_range must be (low, high), got {value!r}.") from None
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or np.any(high <= low):
        raise InputError(f"intensity_range must be finite with low < high, got {value!r}.")
    return low, high
