"""npe2 reader and writer for medical volumes: NIfTI files and DICOM series in, NIfTI labels out.

The reader gives an Image layer (a Labels layer for a NIfTI file holding labels) in (z, y, x)
LPS order with the voxel spacing as ``scale``, the origin as ``translate`` and the source geometry
in ``metadata`` (see :mod:`napari_sam.engine.io.geometry`). The writer saves a Labels layer as
NIfTI with exactly the scan's voxel order, shape and affine, read from that metadata: the
annotator's labels carry it (:func:`labels_metadata`), so File > Save Layers just works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.io.geometry import GEOMETRY_KEY
from napari_sam.engine.io.medical import is_medical_path, read_medical_volume

MAX_LABEL_VALUES = 256  # an integer NIfTI with no negative values and at most this many values is labels
WINDOW_KEY = "napari_sam_window"  # layer.metadata: the window chosen for the image (parse_window text)
WINDOW_RANGE_KEY = f"{WINDOW_KEY}_range"  # layer.metadata: that window's (low, high), as SAM sees it


def get_reader(path: str | list[str]):
    """npe2 reader command: a reader function for a NIfTI file, a DICOM file or a DICOM folder; else None.

    Parameters
    ----------
    path
        One path (a list is accepted when it holds one path).

    Returns
    -------
    callable or None
        :func:`read_medical` when the path is one of ours.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_medical if is_medical_path(path) else None


def is_label_volume(data: np.ndarray) -> bool:
    """Whether a volume holds labels: integers, none negative, at most MAX_LABEL_VALUES distinct values.

    Parameters
    ----------
    data
        The (z, y, x) array.

    Returns
    -------
    bool
        True for a segmentation (a CT has negative HU, an MR many values).
    """
    if data.dtype.kind not in "iub" or (data.size and data.min() < 0):
        return False
    sample = data[:: max(1, len(data) // 16)]  # a few planes first: a scan fails here, cheaply
    return len(np.unique(sample)) <= MAX_LABEL_VALUES and len(np.unique(data)) <= MAX_LABEL_VALUES


def read_medical(path: str | list[str]) -> list[tuple]:
    """npe2 reader: one layer data tuple for the scan (or labels) at ``path``.

    Parameters
    ----------
    path
        As for :func:`get_reader`.

    Returns
    -------
    list of tuple
        ``[(data, kwargs, "image" or "labels")]``; an image's contrast limits are the window SAM
        sees: the series' own display window when it has one (recorded as the layer's window),
        else the robust percentiles SAM scales it with by default.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    volume = read_medical_volume(path)
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    kwargs: dict[str, Any] = {"name": name, **volume.geometry.layer_kwargs()}
    if is_label_volume(volume.data):
        return [(volume.data, kwargs, "labels")]
    from napari_sam.engine.predict.windows import parse_window, window_range

    window = _scan_window(volume.geometry.extra.get("display_window"))
    if window is not None:  # the series' own window (DICOM WindowWidth/Center): shown, and what SAM sees
        lo, hi = window_range(window)
        kwargs["metadata"].update({WINDOW_KEY: window.spec(), WINDOW_RANGE_KEY: [lo, hi]})
    else:  # the percentiles SAM scales the image with by default
        lo, hi = window_range(parse_window("auto"), volume.data) if volume.data.size else (0.0, 1.0)
    kwargs.update(colormap="gray", contrast_limits=(lo, hi) if hi > lo else None)
    return [(volume.data, kwargs, "image")]


def _scan_window(width_level):
    """A recorded (width, level) as a window: the CT preset it equals, else a custom one; None if unusable."""
    from napari_sam.engine.errors import InputError
    from napari_sam.engine.predict.windows import CT_PRESETS, ct_window

    if not width_level:
        return None
    preset = next((name for name, value in CT_PRESETS.items() if tuple(value) == tuple(width_level)), None)
    try:
        return ct_window(*width_level, name=preset or "custom")
    except InputError:
        return None


def geometry_of(data: Any, meta: dict):
    """The :class:`VolumeGeometry` a layer's data lie in: its metadata record, else its scale and translate.

    Parameters
    ----------
    data
        The layer's array (z, y, x) or (y, x).
    meta
        The layer's state as napari hands it to writers (``metadata``, ``scale``, ``translate``).

    Returns
    -------
    VolumeGeometry
        The scan's geometry, or an LPS-aligned one built from ``scale``/``translate``.
    """
    from napari_sam.engine.io.geometry import VolumeGeometry, array_geometry

    record = (meta.get("metadata") or {}).get(GEOMETRY_KEY)
    if record:
        return VolumeGeometry.from_record(record)
    shape = tuple(np.shape(data))
    scale = list(meta.get("scale", [1.0] * len(shape)))
    translate = list(meta.get("translate", [0.0] * len(shape)))
    while len(shape) < 3:
        shape, scale, translate = (1, *shape), [1.0, *scale], [0.0, *translate]
    return array_geometry(scale, translate, shape)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: a Labels layer as NIfTI (.nii or .nii.gz) in the geometry of the scan it was drawn on.

    napari's save dialog has asked before replacing a file; the new file is written beside
    it and swapped in only when complete.

    Parameters
    ----------
    path
        The file to write.
    data
        The labels, (z, y, x) of the scan (or (y, x)).
    meta
        The layer's state (``metadata`` holds the scan's geometry when the layer came from the
        annotator or the reader).

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    InputError
        The labels do not have the scan's shape, or the folder cannot be written.
    """
    from napari_sam.engine.io.nifti import write_nifti

    array = np.asarray(data)
    geometry = geometry_of(array, meta)
    if array.ndim == 2:
        array = array[None]
    return [str(write_nifti(path, array, geometry, overwrite=True))]


def labels_metadata(image_layer) -> dict:
    """``metadata`` for a new Labels layer over ``image_layer``: its geometry record, when it has one.

    Parameters
    ----------
    image_layer
        The annotated Image layer (any layer with ``metadata``).

    Returns
    -------
    dict
        ``{GEOMETRY_KEY: record}`` or empty.
    """
    record = getattr(image_layer, "metadata", {}).get(GEOMETRY_KEY)
    return {GEOMETRY_KEY: record} if record else {}
