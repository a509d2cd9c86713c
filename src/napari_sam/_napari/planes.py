"""The 2D plane of an image layer that the viewer shows, and reading it without loading the rest.

A plane is named in the image layer's *data* frame: the two displayed data axes
(rows = smaller axis number) and an integer index on every other axis, taken
from ``layer.world_to_data(viewer.dims.point)`` (not ``dims.current_step``: the
two differ when layers have scale or translate).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from napari_sam.engine.errors import InputError

_INTENSITY_PLANES = 8  # planes of a stack read to estimate its intensity range


@dataclass(frozen=True)
class Plane:
    """One 2D plane of an nD layer: ``axes`` (row_axis, col_axis) and ``index`` {other axis: int}."""

    axes: tuple[int, int]
    index: tuple[tuple[int, int], ...]  # ((axis, int index), ...) sorted by axis; hashable

    @property
    def index_map(self) -> dict[int, int]:
        return dict(self.index)

    @property
    def key(self) -> tuple[int, ...]:
        """A tuple of non-negative ints naming the plane, used as embedding cache key."""
        return (*self.axes, *(i for _, i in self.index))

    def selector(self, ndim: int) -> tuple:
        """Index tuple that picks this plane out of an ``ndim``-dimensional array."""
        index = self.index_map
        return tuple(slice(None) if axis in self.axes else index[axis] for axis in range(ndim))

    def full_index(self, rows: np.ndarray, cols: np.ndarray, ndim: int) -> tuple[np.ndarray, ...]:
        """nD fancy index of plane pixels (rows, cols), for ``Labels.data_setitem``."""
        index = self.index_map
        out = []
        for axis in range(ndim):
            if axis == self.axes[0]:
                out.append(np.asarray(rows, dtype=np.intp))
            elif axis == self.axes[1]:
                out.append(np.asarray(cols, dtype=np.intp))
            else:
                out.append(np.full(len(rows), index[axis], dtype=np.intp))
        return tuple(out)

    def describe(self) -> str:
        """Short human-readable name, e.g. 'axis 0 = 3' or '2D'."""
        return ", ".join(f"axis {a} = {i}" for a, i in self.index) or "2D"


def base_data(layer):
    """The full-resolution data of an image layer (level 0 of a multiscale pyramid), never loaded whole."""
    return layer.data[0] if layer.multiscale else layer.data


def spatial_shape(layer) -> tuple[int, ...]:
    """Shape of the layer's data without the RGB(A) channel axis."""
    shape = tuple(base_data(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def displayed_layer_axes(viewer, layer) -> tuple[int, int]:
    """The two data axes of ``layer`` that ``viewer`` displays, as (row_axis, col_axis)."""
    if viewer.dims.ndisplay != 2:
        raise InputError("Segment Anything works on 2D views: switch the viewer to 2D (Ctrl+Y) to annotate.")
    offset = viewer.dims.ndim - layer.ndim  # a layer's axes are the viewer's last layer.ndim axes
    axes = sorted(axis - offset for axis in viewer.dims.displayed)
    if axes[0] < 0:
        raise InputError(f"The layer '{layer.name}' is not spread over the displayed axes; show two of its axes.")
    return axes[0], axes[1]


def current_plane(viewer, layer) -> Plane:
    """The plane of ``layer`` that ``viewer`` shows now (nearest integer index, clipped to the data)."""
    axes = displayed_layer_axes(viewer, layer)
    position = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    shape = spatial_shape(layer)
    index = tuple(
        (axis, int(np.clip(np.floor(position[axis] + 0.5), 0, shape[axis] - 1)))
        for axis in range(layer.ndim)
        if axis not in axes
    )
    return Plane(axes, index)


def all_planes(layer, axes: tuple[int, int]) -> Iterator[Plane]:
    """Every plane of ``layer`` spanned by ``axes``, in C order of the other axes."""
    shape = spatial_shape(layer)
    others = [axis for axis in range(len(shape)) if axis not in axes]
    for values in itertools.product(*(range(shape[a]) for a in others)):
        yield Plane(tuple(axes), tuple(zip(others, values, strict=True)))


def plane_shape(layer, plane: Plane) -> tuple[int, int]:
    shape = spatial_shape(layer)
    return shape[plane.axes[0]], shape[plane.axes[1]]


def read_plane(layer, plane: Plane) -> np.ndarray:
    """The plane's pixels as a numpy array (H, W), or (H, W, C) for RGB(A); only this plane is read."""
    data = base_data(layer)
    selector = plane.selector(layer.ndim)
    if getattr(layer, "rgb", False):
        selector = (*selector, slice(None))
    return np.asarray(data[selector])


def layer_intensity_range(layer) -> tuple | None:
    """One intensity range for every plane of ``layer`` (None for uint8 RGB, which needs none).

    Estimated from a few evenly spaced planes of the coarsest pyramid level, so a
    lazy (dask/zarr) stack is never read whole.
    """
    from napari_sam.engine.predict.preprocessing import intensity_range

    data = layer.data[-1] if layer.multiscale else layer.data
    rgb = getattr(layer, "rgb", False)
    if rgb and np.dtype(data.dtype) == np.uint8:
        return None
    spatial = data.shape[:-1] if rgb else data.shape
    lead = spatial[:-2]
    picks = []
    n_planes = int(np.prod(lead)) if lead else 1
    for flat in np.unique(np.linspace(0, n_planes - 1, num=min(n_planes, _INTENSITY_PLANES)).astype(int)):
        picks.append(np.asarray(data[np.unravel_index(flat, lead)] if lead else data))
    sample = np.concatenate(picks, axis=0)
    lo, hi = intensity_range(sample, channel_axis=-1 if rgb else None)
    return lo, hi
