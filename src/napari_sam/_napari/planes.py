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

Box = tuple[int, int, int, int]
"""A rectangle of a plane in its data pixels: (row0, row1, col0, col1), half-open."""


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

    def selector(self, ndim: int, box: Box | None = None) -> tuple:
        """Index tuple that picks this plane (or its ``box``) out of an ``ndim``-dimensional array.

        The result has the plane's axes in data order: (rows, cols) = (axes[0], axes[1]).
        """
        index = self.index_map
        rows, cols = (slice(None), slice(None)) if box is None else (slice(box[0], box[1]), slice(box[2], box[3]))
        return tuple(
            rows if axis == self.axes[0] else cols if axis == self.axes[1] else index[axis] for axis in range(ndim)
        )

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


def describe_plane(viewer, layer, plane: Plane) -> str:
    """``plane`` named as ``viewer``'s sliders show it: 'slice z=14', or 'slice 14 (axis -3)' for an unnamed axis.

    The slider shows a step of the viewer's world grid, not the layer's data index:
    they differ when layers have scale or translate. A plane of a 2D layer is '2D'.

    Parameters
    ----------
    viewer
        The viewer (its ``dims``: axis labels and ranges).
    layer
        The layer ``plane`` belongs to (``plane`` is in its data frame).
    plane
        The plane to name.
    """
    if not plane.index:
        return "2D"
    position = np.zeros(layer.ndim)
    for axis, index in plane.index:
        position[axis] = index
    world = np.asarray(layer.data_to_world(position), dtype=float)
    offset = viewer.dims.ndim - layer.ndim  # a layer's axes are the viewer's last layer.ndim axes
    parts = []
    for axis, _ in plane.index:
        start, _stop, step = viewer.dims.range[axis + offset]
        slider = int(np.floor((world[axis] - start) / step + 0.5))
        label = str(viewer.dims.axis_labels[axis + offset])
        # a named axis reads 'z=14'; napari's default labels are numbers: '14 (axis -3)'
        parts.append(f"{slider} (axis {label})" if label.lstrip("-").isdigit() else f"{label}={slider}")
    return "slice " + ", ".join(parts)


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
        raise InputError("Segment Anything works on 2D views: switch the viewer to 2D (Ctrl+Y).")
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
    """(H, W) of ``plane`` in ``layer``: the sizes of its row and column axes."""
    shape = spatial_shape(layer)
    return shape[plane.axes[0]], shape[plane.axes[1]]


def clip_box(box: Box, shape: tuple[int, int]) -> Box:
    """``box`` cut to a plane of ``shape``.

    Parameters
    ----------
    box
        (row0, row1, col0, col1) in the plane's data pixels, half-open; may reach outside.
    shape
        The plane's (H, W).

    Raises
    ------
    InputError
        When no pixel of ``box`` lies in the plane.
    """
    row0, row1, col0, col1 = box
    row0, row1 = max(0, row0), min(shape[0], row1)
    col0, col1 = max(0, col0), min(shape[1], col1)
    if row1 - row0 < 1 or col1 - col0 < 1:
        raise InputError("The region of interest does not overlap the image.")
    return row0, row1, col0, col1


def plane_region(layer, plane: Plane, box: Box | None = None):
    """The plane's pixels (h, w) or (h, w, C) for RGB(A), cut to ``box``, as the layer's own array type.

    Nothing is read: a dask or zarr layer gives a lazy array, so large planes reach
    the engine's tiled runner without being loaded whole.

    Parameters
    ----------
    layer
        An Image layer (level 0 of a multiscale one is used).
    plane
        The plane, in the layer's data frame; rows are ``plane.axes[0]``.
    box
        (row0, row1, col0, col1) inside the plane (see :func:`clip_box`); None: the whole plane.
    """
    selector = plane.selector(layer.ndim, box)
    if getattr(layer, "rgb", False):
        selector = (*selector, slice(None))
    return base_data(layer)[selector]


def read_plane(layer, plane: Plane) -> np.ndarray:
    """The plane's pixels as a numpy array (H, W), or (H, W, C) for RGB(A); only this plane is read."""
    return np.asarray(plane_region(layer, plane))


def transform_kwargs(layer) -> dict:
    """Spatial transform of ``layer`` as ``add_*`` keyword arguments, so a new layer's data coincide with it."""
    return {
        "scale": np.asarray(layer.scale),
        "translate": np.asarray(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": layer.affine,
    }


def one_plane_shape(layer, plane: Plane, size: tuple[int, int] | None = None) -> tuple[int, ...]:
    """Shape of a one-plane layer over ``plane``: ``size`` on its axes, 1 elsewhere.

    Parameters
    ----------
    layer
        The layer the plane belongs to (its ``ndim`` axes, without an RGB channel axis).
    plane
        The plane the new layer covers.
    size
        (h, w) of the new layer on the plane's (row, col) axes; None: the whole plane.
    """
    rows, cols = plane_shape(layer, plane) if size is None else size
    return tuple(
        rows if axis == plane.axes[0] else cols if axis == plane.axes[1] else 1 for axis in range(layer.ndim)
    )


def one_plane_transform(layer, plane: Plane, corner: tuple[int, int] = (0, 0)) -> dict:
    """Transform (``add_*`` keywords) of a one-plane layer whose first pixel is ``plane``'s pixel ``corner``.

    Its data ``d`` sit at ``layer``'s data ``d + origin``, origin = the plane's index on
    the other axes and ``corner`` on the plane's axes; so its translate is where
    ``layer``'s scale, rotate and shear put ``origin`` (the affine applies after).

    Parameters
    ----------
    layer
        The layer whose plane the new layer covers; scale, rotate, shear and affine are copied.
    plane
        The plane the new layer lies on.
    corner
        (row, col) of the plane's pixel under the new layer's first pixel (a region's corner).
    """
    from napari.utils.transforms import Affine

    index = plane.index_map
    origin = [
        corner[0] if axis == plane.axes[0] else corner[1] if axis == plane.axes[1] else index[axis]
        for axis in range(layer.ndim)
    ]
    kwargs = transform_kwargs(layer)
    data_to_physical = Affine(
        scale=kwargs["scale"], translate=kwargs["translate"], rotate=kwargs["rotate"], shear=kwargs["shear"]
    )
    return {**kwargs, "translate": np.asarray(data_to_physical(np.asarray(origin, dtype=float)))}


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
