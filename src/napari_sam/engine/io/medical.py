"""One entry point for medical volumes: a NIfTI file or a DICOM series (file or folder) by its path."""

from __future__ import annotations

import os
from pathlib import Path

from napari_sam.engine.io.geometry import MedicalVolume
from napari_sam.engine.io.nifti import NIFTI_SUFFIXES

DICOM_SUFFIXES = (".dcm", ".ima")


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a .dcm/.ima name, or 'DICM' after the 128-byte preamble.

    Parameters
    ----------
    path
        A file.

    Returns
    -------
    bool
        True for a DICOM Part 10 file (or one named like one).
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_medical_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a NIfTI file, a DICOM file or a folder holding DICOM files.

    Parameters
    ----------
    path
        Any path (it need not exist for a NIfTI name).

    Returns
    -------
    bool
        True when :func:`read_medical_volume` is the reader for it.
    """
    path = Path(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return True
    if path.is_dir():
        return any(looks_like_dicom(p) for p in sorted(path.iterdir())[:50] if p.is_file())
    return path.is_file() and looks_like_dicom(path)


def read_medical_volume(path: str | os.PathLike) -> MedicalVolume:
    """The (z, y, x) volume and geometry at ``path``: NIfTI (:func:`.nifti.read_nifti`) or DICOM (:func:`.dicom.read_dicom_series`).

    Parameters
    ----------
    path
        A .nii/.nii.gz file, a DICOM file or a folder holding one DICOM series.

    Returns
    -------
    MedicalVolume
        Values in physical units, geometry as in :mod:`.geometry`.

    Raises
    ------
    InputError
        From the reader: unreadable file, several series, ...
    """
    if str(path).lower().endswith(NIFTI_SUFFIXES):
        from napari_sam.engine.io.nifti import read_nifti

        return read_nifti(path)
    from napari_sam.engine.io.dicom import read_dicom_series

    return read_dicom_series(path)
