"""DICOM series (a folder of slices) into one volume with its geometry (needs pydicom: ``napari-sam[medical]``).

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on
the cross product of ImageOrientationPatient's row and column cosines), never by file name; the
slice spacing comes from those positions, not from SliceThickness. Stored values become physical
units with each slice's RescaleSlope and RescaleIntercept (Hounsfield units for CT). Geometry as in
:mod:`.geometry`: a (z, y, x) array in the patient's LPS frame.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.geometry import MedicalVolume, make_geometry, rescaled

SPACING_TOLERANCE = 0.01  # relative spread of slice gaps accepted as one spacing
_IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _pydicom():
    try:
        import pydicom
    except ImportError:  # the optional extra
        raise InputError("Reading DICOM needs pydicom: pip install 'napari-sam[medical]'.") from None
    return pydicom


def _headers(folder: Path) -> list:
    """The DICOM image headers in ``folder`` (files that are not DICOM images are skipped)."""
    pydicom = _pydicom()
    headers = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue  # README, DICOMDIR-less junk, thumbnails...
        if "Rows" in header and "SeriesInstanceUID" in header:
            header.filename = str(path)
            headers.append(header)
    return headers


def describe_series(uid: str, headers: list) -> str:
    """One line naming a series: number, description, modality, slice count and UID.

    Parameters
    ----------
    uid
        Its SeriesInstanceUID.
    headers
        Its slices' headers.

    Returns
    -------
    str
        E.g. ``series 3 'AX ABD' (CT, 12 slices, UID 1.2.3)``.
    """
    first = headers[0]
    number = first.get("SeriesNumber", "?")
    text = str(first.get("SeriesDescription", "") or "").strip()
    modality = first.get("Modality", "?")
    name = f"series {number} '{text}'" if text else f"series {number}"
    return f"{name} ({modality}, {len(headers)} slices, UID {uid}; e.g. {Path(first.filename).name})"


def _floats(header, keyword: str, count: int) -> tuple[float, ...] | None:
    value = header.get(keyword)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and all(np.isfinite(values)) else None


def read_dicom_series(path: str | os.PathLike) -> MedicalVolume:
    """Read the DICOM series in a folder, or the series one file belongs to.

    Parameters
    ----------
    path
        A folder holding one series (other files are ignored), or one slice of a series (its
        folder is searched for the rest of that series).

    Returns
    -------
    MedicalVolume
        ``data`` (z, y, x) in physical units; ``geometry`` records the series (UID, modality).
        Missing PixelSpacing or slice positions give a ``UserWarning`` and spacing 1.

    Raises
    ------
    InputError
        No DICOM images, a folder holding several series (the message lists them), slices
        of different sizes or at the same position, or pixel data that cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"No such DICOM file or folder: {path}.")
    folder = path if path.is_dir() else path.parent
    chosen = None
    if path.is_file():
        header = _headers_of([path])
        if not header:
            raise InputError(f"{path.name} is not a DICOM image.")
        chosen = str(header[0].SeriesInstanceUID)
    series: dict[str, list] = defaultdict(list)
    for header in _headers(folder):
        series[str(header.SeriesInstanceUID)].append(header)
    if not series:
        raise InputError(f"No DICOM images in {folder}.")
    if chosen is None and len(series) > 1:
        listing = "\n  ".join(describe_series(uid, headers) for uid, headers in series.items())
        raise InputError(
            f"{folder} holds {len(series)} DICOM series:\n  {listing}\nOpen one file of the series you want "
            "(it is then read alone), or move each series into its own folder."
        )
    uid = chosen or next(iter(series))
    return _read_series(series[uid], uid)


def _headers_of(paths: list[Path]) -> list:
    pydicom = _pydicom()
    try:
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
        return []


def _slice_order(headers: list, orientation: tuple[float, ...]) -> tuple[list, np.ndarray | None]:
    """The headers sorted along the slice normal, and their positions; by InstanceNumber without positions."""
    positions = [_floats(h, "ImagePositionPatient", 3) for h in headers]
    if any(p is None for p in positions):
        warnings.warn(
            "Some slices have no ImagePositionPatient: they are ordered by InstanceNumber, placed at the "
            "origin with a slice spacing of 1 (distances across slices are not physical).",
            UserWarning,
            stacklevel=3,
        )
        order = sorted(range(len(headers)), key=lambda i: int(headers[i].get("InstanceNumber", i) or i))
        return [headers[i] for i in order], None
    normal = np.cross(orientation[:3], orientation[3:])
    distances = np.array([np.dot(p, normal) for p in positions])
    order = np.argsort(distances, kind="stable")
    return [headers[i] for i in order], np.asarray(positions)[order]


def _slice_spacing(positions: np.ndarray | None, normal: np.ndarray) -> float:
    if positions is None or len(positions) < 2:
        return 1.0  # no positions (warned about) or one slice: no spacing to speak of
    gaps = np.diff(positions @ normal)
    if np.any(gaps <= 1e-6 * max(1.0, float(np.abs(gaps).max()))):
        raise InputError(
            "Two slices of the series lie at the same position (ImagePositionPatient): the folder probably "
            "holds duplicates or several acquisitions with one series UID; keep one copy of each slice."
        )
    spacing = float(np.median(gaps))
    if gaps.max() - gaps.min() > SPACING_TOLERANCE * spacing:
        warnings.warn(
            f"The slices are unevenly spaced ({gaps.min():.3g} to {gaps.max():.3g} mm); the volume uses the median "
            f"spacing {spacing:.3g} mm, so positions across slices are approximate.",
            UserWarning,
            stacklevel=3,
        )
    return spacing


def _read_series(headers: list, uid: str) -> MedicalVolume:
    pydicom = _pydicom()
    first = headers[0]
    orientation = _floats(first, "ImageOrientationPatient", 6)
    if orientation is None:
        warnings.warn(
            "The series has no ImageOrientationPatient: the slices are taken as axial (row along L, column along P).",
            UserWarning,
            stacklevel=2,
        )
        orientation = _IDENTITY_ORIENTATION
    headers, positions = _slice_order(headers, orientation)
    pixel = _floats(first, "PixelSpacing", 2)
    if pixel is None:
        warnings.warn(
            "The series has no PixelSpacing: pixels are taken as 1 x 1 mm (in-plane distances are not physical).",
            UserWarning,
            stacklevel=2,
        )
        pixel = (1.0, 1.0)
    row_cos, col_cos = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row_cos, col_cos)
    dz = _slice_spacing(positions, normal)
    shapes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(shapes) > 1:
        raise InputError(f"The slices of series {uid} have different sizes {sorted(shapes)}; it cannot be one volume.")
    planes, rescales = [], []
    for header in headers:
        try:
            dataset = pydicom.dcmread(header.filename)
            planes.append(np.asarray(dataset.pixel_array))
        except Exception as error:  # noqa: BLE001 (pydicom's decoders raise many kinds; all mean "cannot decode")
            raise InputError(
                f"Cannot decode the pixels of {Path(header.filename).name} ({type(error).__name__}: {error}); "
                "a compressed transfer syntax may need an extra decoder (pip install pylibjpeg pylibjpeg-libjpeg)."
            ) from None
        rescales.append((_number(header, "RescaleSlope", 1.0), _number(header, "RescaleIntercept", 0.0)))
    stack = np.stack(planes)  # (slice k, row j, column i)
    if len(set(rescales)) == 1:
        values = rescaled(stack, *rescales[0])
    else:  # per-slice rescale (some PET/MR): float32 for all
        values = np.stack([rescaled(p, s, i).astype(np.float32) for p, (s, i) in zip(stack, rescales)])
    affine = np.eye(4)  # source voxel (i = column, j = row, k = slice) -> LPS
    affine[:3, 0] = row_cos * pixel[1]  # PixelSpacing is (between rows, between columns)
    affine[:3, 1] = col_cos * pixel[0]
    affine[:3, 2] = normal * dz
    affine[:3, 3] = positions[0] if positions is not None else 0.0
    voxels = np.transpose(values, (2, 1, 0))  # (i, j, k)
    geometry = make_geometry(
        affine, "LPS", voxels.shape, "dicom",
        series_uid=uid,
        modality=str(first.get("Modality", "")),
        series_description=str(first.get("SeriesDescription", "") or ""),
        image_orientation_patient=[float(v) for v in orientation],
        display_window=_display_window(first),
        image_position_patient=None if positions is None else [float(v) for v in positions[0]],  # first slice
        source_path=str(Path(first.filename).parent),
    )
    return MedicalVolume(np.ascontiguousarray(geometry.to_array(voxels)), geometry)


def _number(header, keyword: str, default: float) -> float:
    value = header.get(keyword)
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _display_window(header) -> list[float] | None:
    """The series' own (WindowWidth, WindowCenter) in HU (the first of several), or None."""
    values = []
    for keyword in ("WindowWidth", "WindowCenter"):
        value = header.get(keyword)
        value = value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            return None
    return values if values[0] > 0 and all(np.isfinite(values)) else None
