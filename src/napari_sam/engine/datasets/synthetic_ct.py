"""A small synthetic abdominal CT in Hounsfield units, with exact labels of its lesions.

An elliptical body (subcutaneous fat around soft tissue) in air, a vertebra of dense bone behind,
and a liver-like organ holding a few contrast-enhanced (brighter) lesions, each an ellipsoid over
several planes. Values are HU (int16) with noise, so a full-range scaling (air to bone) leaves the
lesions a few grey levels above the organ, while a liver or abdomen window shows them clearly:
what the intensity windows are for. Everything is deterministic given ``seed``.

Arrays are (z, y, x) = (superior, posterior, left) as the medical readers return them; labels are
int32, 0 = background, lesions numbered 1..N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.errors import InputError

AIR, FAT, SOFT_TISSUE, ORGAN, LESION, BONE = -1000, -100, 40, 60, 150, 900  # HU


@dataclass
class SyntheticCT:
    """``image`` (z, y, x) int16 HU; ``lesions`` int32 instance labels; ``organ`` bool; ``spacing`` (z, y, x) mm."""

    image: np.ndarray
    lesions: np.ndarray
    organ: np.ndarray
    spacing: tuple[float, float, float]


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def synthetic_ct(
    shape: tuple[int, int, int] = (12, 128, 128),
    n_lesions: int = 3,
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.7),
    noise_hu: float = 12.0,
    seed: int = 0,
) -> SyntheticCT:
    """A synthetic abdominal CT volume with contrast-enhanced lesions in an organ.

    Parameters
    ----------
    shape
        (z, y, x) voxels; y and x at least 64.
    n_lesions
        Lesions placed in the organ, apart from each other, each spanning several planes.
    spacing
        (z, y, x) voxel size in mm: lesions are round in millimetres, so anisotropic voxels
        make them span fewer planes than pixels.
    noise_hu
        Standard deviation of the Gaussian noise (HU).
    seed
        Random seed.

    Returns
    -------
    SyntheticCT
        The volume, its lesion labels, the organ mask and the spacing.

    Raises
    ------
    InputError
        A shape too small for the anatomy, or fewer than one lesion.
    """
    z, h, w = (int(s) for s in shape)
    if h < 64 or w < 64 or z < 1 or n_lesions < 1:
        raise InputError(f"synthetic_ct needs y, x >= 64, z >= 1 and n_lesions >= 1; got shape {shape}, {n_lesions}.")
    rng = np.random.default_rng(seed)
    flat = (1, h, w)
    body = _ellipsoid(flat, (0, h * 0.5, w * 0.5), (1e9, h * 0.42, w * 0.47))
    inner = _ellipsoid(flat, (0, h * 0.5, w * 0.5), (1e9, h * 0.38, w * 0.43))
    spine = _ellipsoid(flat, (0, h * 0.76, w * 0.5), (1e9, h * 0.07, w * 0.07))
    image = np.full((z, h, w), AIR, dtype=np.float64)
    image[:, body[0]] = FAT
    image[:, inner[0]] = SOFT_TISSUE
    image[:, spine[0]] = BONE
    # the organ: a large ellipsoid on the patient's right (low x) and front (low y)
    organ_centre = (z / 2, h * 0.42, w * 0.38)
    organ_radii_mm = (max(z * spacing[0] * 0.8, spacing[0]), h * 0.22 * spacing[1], w * 0.22 * spacing[2])
    organ = _ellipsoid((z, h, w), organ_centre, [r / s for r, s in zip(organ_radii_mm, spacing)])
    image[organ] = ORGAN
    lesions = np.zeros((z, h, w), dtype=np.int32)
    placed: list[tuple[np.ndarray, float]] = []
    candidates = np.argwhere(organ)
    for label in range(1, n_lesions + 1):
        for _attempt in range(200):
            radius_mm = rng.uniform(4.5, 7.0)
            centre = candidates[rng.integers(len(candidates))].astype(float)
            radii = [max(radius_mm / s, 0.6) for s in spacing]
            lesion = _ellipsoid((z, h, w), centre, radii)
            centre_mm = centre * np.asarray(spacing)
            inside = (lesion & ~organ).sum() == 0
            apart = all(np.linalg.norm(centre_mm - c) > radius_mm + r + 3.0 for c, r in placed)
            if inside and apart and lesion.any():
                lesions[lesion] = label
                image[lesion] = LESION
                placed.append((centre_mm, radius_mm))
                break
        else:
            raise InputError(f"Could not place {n_lesions} lesions apart in the organ; use a larger shape or fewer.")
    image += rng.normal(0.0, noise_hu, size=image.shape)
    return SyntheticCT(np.rint(image).astype(np.int16), lesions, organ, tuple(float(s) for s in spacing))


def write_dicom_series(
    image: np.ndarray,
    folder: str | os.PathLike,
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.7),
    origin: tuple[float, float, float] = (-120.0, -90.0, 40.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    series_number: int = 1,
    description: str = "synthetic CT",
    file_names: list[str] | None = None,
    with_spacing: bool = True,
    window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write a (z, y, x) HU volume as an axial CT DICOM series, one file per plane (needs pydicom).

    Stored values are ``(HU - intercept) / slope`` as uint16/int16; plane k lies at
    ``origin + k * spacing[0]`` along z (LPS), rows along +y (posterior), columns along +x (left).

    Parameters
    ----------
    image
        (z, y, x) values in HU.
    folder
        An existing folder.
    spacing
        (slice gap, row spacing, column spacing) in mm.
    origin
        LPS (x, y, z) of the first voxel of plane 0, mm.
    slope, intercept
        RescaleSlope and RescaleIntercept written to every slice.
    series_uid
        The SeriesInstanceUID (a new one by default).
    series_number, description
        SeriesNumber and SeriesDescription.
    file_names
        One name per plane (e.g. shuffled); default ``slice_000.dcm``, ...
    with_spacing
        False leaves out PixelSpacing (to test the reader's fallback).
    window
        (WindowWidth, WindowCenter) to record as the series' display window, or None.

    Returns
    -------
    list of Path
        The files, in plane order.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    stored = np.rint((np.asarray(image, dtype=np.float64) - intercept) / slope)
    signed = stored.min() < 0
    stored = stored.astype(np.int16 if signed else np.uint16)
    names = file_names or [f"slice_{k:03d}.dcm" for k in range(len(image))]
    paths = []
    for k, plane in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Synthetic^Phantom", "SYNTH0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = series_number, description, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
        if with_spacing:
            ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowWidth, ds.WindowCenter = window
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        pydicom.dcmwrite(ds.filename, ds, enforce_file_format=True)
        paths.append(Path(ds.filename))
    return paths
