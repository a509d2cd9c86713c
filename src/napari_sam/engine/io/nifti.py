"""NIfTI-1/2 volumes (.nii, .nii.gz) in and out, with their geometry (needs nibabel: ``napari-sam[medical]``).

A scan is read into a (z, y, x) array in the patient's LPS frame (see :mod:`.geometry`) with its
values in physical units (``scl_slope``/``scl_inter`` applied in a dtype that holds them); labels
drawn over it are written back with exactly the scan's voxel order, shape and affine.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.geometry import (
    RAS_TO_LPS,
    MedicalVolume,
    VolumeGeometry,
    make_geometry,
    rescaled,
)
from napari_sam.engine.io.safe_write import (
    check_output_folder,
    move_into_place,
    remove_path,
    resolved,
    temporary_sibling,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, MemoryError)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (.nii or .nii.gz, any case).

    Parameters
    ----------
    path
        A file name.

    Returns
    -------
    bool
        True for the NIfTI suffixes.
    """
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _nibabel():
    try:
        import nibabel
    except ImportError:  # the optional extra
        raise InputError(
            "Reading and writing NIfTI needs nibabel: pip install 'napari-sam[medical]'."
        ) from None
    return nibabel


def read_nifti(path: str | os.PathLike) -> MedicalVolume:
    """Read a 2D or 3D NIfTI scan (a 4D file with one volume too) with its geometry.

    Parameters
    ----------
    path
        A .nii or .nii.gz file.

    Returns
    -------
    MedicalVolume
        ``data`` (z, y, x), LPS-aligned; CT's integers stay int16 after the rescale.

    Raises
    ------
    InputError
        The file is missing, truncated or not NIfTI, or holds several volumes (4D).
    """
    nib = _nibabel()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No such NIfTI file: {path}.")
    try:
        image = nib.load(str(path))
        raw = np.asanyarray(image.dataobj.get_unscaled())
        slope, intercept = image.dataobj.slope, image.dataobj.inter
    except (nib.filebasedimages.ImageFileError, *_READ_ERRORS) as error:
        raise InputError(
            f"Cannot read {path.name} as NIfTI ({type(error).__name__}: {error}). The file may be incomplete "
            "(an interrupted copy or download) or not a NIfTI file; check it opens in another viewer."
        ) from None
    raw = np.asarray(raw)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise InputError(
            f"{path.name} holds a {raw.ndim}D image of shape {raw.shape}; only single 2D or 3D volumes are "
            "read. Extract one volume first (e.g. with nibabel: image.slicer[..., 0])."
        )
    header = image.header
    geometry = make_geometry(
        image.affine, "RAS", raw.shape, "nifti",
        source_path=str(path),
        sform_code=int(header["sform_code"]),
        qform_code=int(header["qform_code"]),
        units=header.get_xyzt_units()[0],
    )
    data = np.ascontiguousarray(geometry.to_array(rescaled(raw, slope, intercept)))
    return MedicalVolume(data, geometry)


def nifti_bytes(array: np.ndarray, geometry: VolumeGeometry, compress: bool) -> bytes:
    """The NIfTI-1 file holding (z, y, x) ``array`` in ``geometry``'s source voxel order and affine.

    Parameters
    ----------
    array
        Shape ``geometry.shape`` (labels or an image over the scan).
    geometry
        The scan's geometry; a DICOM scan's LPS affine is converted to NIfTI's RAS.
    compress
        gzip the bytes (for .nii.gz).

    Returns
    -------
    bytes
        The whole file.

    Raises
    ------
    InputError
        ``array`` does not have the scan's shape.
    """
    nib = _nibabel()
    voxels = geometry.to_source(array)
    if voxels.dtype == np.bool_:
        voxels = voxels.astype(np.uint8)
    if voxels.dtype.kind in "iu":  # labels: the smallest type other tools all read (none reads 64-bit well)
        low, high = int(voxels.min(initial=0)), int(voxels.max(initial=0))
        for dtype in (np.uint8, np.uint16, np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                voxels = voxels.astype(dtype, copy=False)
                break
    ras = geometry.source_affine if geometry.source_frame == "RAS" else RAS_TO_LPS @ geometry.source_affine
    image = nib.Nifti1Image(voxels, ras)
    # a NIfTI source's sform/qform codes are kept (so readers pick the same affine); others get 1 (scanner)
    codes = geometry.extra
    sform_code, qform_code = int(codes.get("sform_code") or 0), int(codes.get("qform_code") or 0)
    if not (sform_code or qform_code):
        sform_code = qform_code = 1
    image.set_sform(ras, code=sform_code)
    image.set_qform(ras, code=qform_code)
    image.header.set_xyzt_units(codes.get("units") or "mm")
    if voxels.dtype.kind in "iu":
        image.header.set_slope_inter(1.0, 0.0)  # labels are stored as they are, never rescaled
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=6) if compress else data


def check_nifti_output(path: str | os.PathLike, geometry: VolumeGeometry, overwrite: bool = False) -> Path:
    """Check, before any work, that a NIfTI file can be written at ``path`` (see :func:`write_nifti`).

    Parameters
    ----------
    path
        The file to write.
    geometry
        The scan's geometry (its ``source_path`` is never written over).
    overwrite
        Whether an existing file may be replaced.

    Returns
    -------
    Path
        ``path`` as a Path.

    Raises
    ------
    InputError
        A wrong suffix, the scan itself, an existing file without ``overwrite``, or a missing
        or read-only folder.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"A NIfTI file name ends in .nii or .nii.gz, got {path.name}.")
    source = geometry.extra.get("source_path")
    if source and resolved(path) == resolved(source):  # a DICOM folder may well hold the result
        raise InputError(f"{path} is the scan itself; choose another file name (the scan is never written over).")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; choose another name or pass overwrite=True (--overwrite).")
    check_output_folder(path)
    return path


def write_nifti(
    path: str | os.PathLike, array: np.ndarray, geometry: VolumeGeometry, overwrite: bool = False
) -> Path:
    """Write (z, y, x) ``array`` as a NIfTI file in the scan's geometry, atomically.

    The file is written beside ``path`` under a temporary name and moved into place when
    complete: a failure leaves nothing half-written, and an existing file is only replaced
    with ``overwrite``.

    Parameters
    ----------
    path
        Ends in .nii or .nii.gz (compressed).
    array
        Labels (or any image) of the scan's (z, y, x) shape.
    geometry
        The scan's :class:`VolumeGeometry` (from the reader or ``layer.metadata``).
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        A wrong suffix, an existing file without ``overwrite``, the scan itself as target, a
        missing or read-only folder, or an array of another shape.
    """
    path = check_nifti_output(path, geometry, overwrite)
    payload = nifti_bytes(array, geometry, compress=path.name.lower().endswith(".gz"))
    temporary = temporary_sibling(path)
    try:
        temporary.write_bytes(payload)
        move_into_place(temporary, path)
    except BaseException:
        remove_path(temporary)
        raise
    return path
