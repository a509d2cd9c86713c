"""Medical readers and writers: DICOM series, NIfTI geometry, and what bad input does."""

from __future__ import annotations

import random
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_sam.engine.datasets.synthetic_ct import synthetic_ct, write_dicom_series
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.dicom import read_dicom_series
from napari_sam.engine.io.geometry import VolumeGeometry, make_geometry, rescaled
from napari_sam.engine.io.nifti import read_nifti, write_nifti

SPACING = (2.5, 0.7, 0.7)  # (slice gap, row, column) mm


@pytest.fixture(scope="module")
def ct():
    return synthetic_ct(shape=(12, 64, 72), n_lesions=1, seed=5)


def shuffled_names(n: int, seed: int = 0) -> list[str]:
    names = [f"IM{k:04d}" for k in range(n)]  # no .dcm suffix, as scanners often write them
    random.Random(seed).shuffle(names)
    return names


def test_dicom_series_reads_back_hu_and_spacing(ct, tmp_path):
    # slope 0.5 makes the stored values differ from HU; shuffled names mean file order says nothing
    write_dicom_series(ct.image, tmp_path, spacing=SPACING, slope=0.5, intercept=-1024.0,
                       file_names=shuffled_names(len(ct.image)))
    (tmp_path / "README.txt").write_text("not DICOM")  # other files in the folder are ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete series reads without a warning
        volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.data, ct.image)
    assert volume.data.dtype == np.float32  # slope 0.5: HU are not all integers in general
    np.testing.assert_allclose(volume.spacing, SPACING)
    np.testing.assert_allclose(volume.geometry.origin, (40.0, -90.0, -120.0))  # (S, P, L) of the first voxel
    assert volume.geometry.extra["modality"] == "CT"
    assert volume.geometry.extra["image_position_patient"] == [-120.0, -90.0, 40.0]


def test_dicom_integer_rescale_stays_int16_and_one_file_opens_its_series(ct, tmp_path):
    paths = write_dicom_series(ct.image, tmp_path, spacing=SPACING, slope=1.0, intercept=-1024.0)
    volume = read_dicom_series(paths[5])  # one file: its whole series
    assert volume.data.dtype == np.int16
    np.testing.assert_array_equal(volume.data, ct.image)


def test_dicom_folder_with_two_series_names_them(ct, tmp_path):
    write_dicom_series(ct.image[:4], tmp_path, description="AX ABDOMEN", series_number=3,
                       file_names=[f"a{k}.dcm" for k in range(4)])
    write_dicom_series(ct.image[:3], tmp_path, description="LOCALIZER", series_number=1,
                       file_names=[f"b{k}.dcm" for k in range(3)])
    with pytest.raises(InputError) as caught:
        read_dicom_series(tmp_path)
    message = str(caught.value)
    assert "2 DICOM series" in message and "AX ABDOMEN" in message and "LOCALIZER" in message
    assert "4 slices" in message and "3 slices" in message
    # choosing one file of a series reads that series alone
    assert read_dicom_series(tmp_path / "b1.dcm").data.shape == (3, 64, 72)


def test_dicom_without_pixel_spacing_warns_and_uses_1(ct, tmp_path):
    write_dicom_series(ct.image[:3], tmp_path, spacing=SPACING, with_spacing=False)
    with pytest.warns(UserWarning, match="no PixelSpacing"):
        volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.spacing, (2.5, 1.0, 1.0))


def test_empty_dicom_folder(tmp_path):
    (tmp_path / "x.txt").write_text("nothing")
    with pytest.raises(InputError, match="No DICOM images"):
        read_dicom_series(tmp_path)


def test_corrupt_nifti_is_a_clear_error(ct, tmp_path):
    good = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(ct.image.T.copy(), np.eye(4)), good)
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="Cannot read truncated.nii.gz as NIfTI.*incomplete"):
        read_nifti(bad)
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"this is no nifti header" * 10)
    with pytest.raises(InputError, match="Cannot read junk.nii"):
        read_nifti(junk)


def test_nifti_writer_refuses_existing_and_wrong_shape_and_leaves_nothing(ct, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(ct.image.T.copy(), np.diag([0.7, 0.7, 2.5, 1])), scan)
    volume = read_nifti(scan)
    with pytest.raises(InputError, match="is the scan itself"):
        write_nifti(scan, ct.lesions, volume.geometry, overwrite=True)
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(InputError, match=r"shape \(3, 64, 72\).*\(12, 64, 72\)"):
        write_nifti(out, ct.lesions[:3], volume.geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]  # no temporary left behind
    write_nifti(out, ct.lesions, volume.geometry)
    with pytest.raises(InputError, match="exists"):
        write_nifti(out, ct.lesions, volume.geometry)
    first = out.read_bytes()
    write_nifti(out, np.zeros_like(ct.lesions), volume.geometry, overwrite=True)
    assert out.read_bytes() != first and sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "seg.nii.gz"]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, -1), (1, -1, 1)])
def test_any_axis_permutation_and_flip_is_resolved_exactly(order, signs, tmp_path):
    """Whatever the file's voxel order, voxel -> world positions agree with nibabel's affine."""
    rng = np.random.default_rng(0)
    voxels = rng.integers(0, 1000, size=(5, 6, 7)).astype(np.int16)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    spacing = (0.8, 1.1, 3.0)
    for source_axis, world_axis in enumerate(order):
        affine[world_axis, source_axis] = signs[source_axis] * spacing[source_axis]
    affine[:3, 3] = (10, -20, 30)
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(voxels, affine), path)
    volume = read_nifti(path)
    g = volume.geometry
    # every array voxel's (S, P, L) world position is its file voxel's RAS position, converted
    for index in [(0, 0, 0), (1, 2, 3), tuple(s - 1 for s in g.shape)]:
        world = np.asarray(g.origin) + np.asarray(index) * np.asarray(g.spacing)
        source = (g.array_to_source @ [*index, 1])[:3].astype(int)
        ras = affine @ [*source, 1]
        np.testing.assert_allclose(world, (ras[2], -ras[1], -ras[0]), atol=1e-5)
        assert volume.data[index] == voxels[tuple(source)]
    # and the writer undoes it exactly
    out = tmp_path / "back.nii"
    write_nifti(out, volume.data, g)
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), voxels)


def test_oblique_scan_warns_and_keeps_exact_affine(tmp_path):
    angle = np.radians(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.7, 2.5])
    with pytest.warns(UserWarning, match="oblique.*10.0 degrees"):
        geometry = make_geometry(affine, "RAS", (8, 8, 4), "nifti")
    assert geometry.oblique_degrees == pytest.approx(10.0, abs=1e-6)
    back = VolumeGeometry.from_record(geometry.to_record())
    np.testing.assert_array_equal(back.source_affine, affine)


def test_rescale_dtypes():
    raw = np.array([0, 1000, 4095], dtype=np.uint16)
    assert rescaled(raw, 1.0, -1024.0).dtype == np.int16
    np.testing.assert_array_equal(rescaled(raw, 1.0, -1024.0), [-1024, -24, 3071])
    assert rescaled(raw, 2.0, -40000.0).dtype == np.int32
    assert rescaled(raw, 0.5, 0.0).dtype == np.float32
    assert rescaled(raw, None, None) is raw


def test_dicom_uneven_slices_per_slice_rescale_and_duplicates(ct, tmp_path):
    import pydicom

    paths = write_dicom_series(ct.image[:4], tmp_path, spacing=SPACING, slope=1.0, intercept=-1024.0)
    # slice 3 moved 1 mm further, and stored with its own rescale (some scanners do that)
    ds = pydicom.dcmread(paths[3])
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 1.0]
    hu = ct.image[3].astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -2048.0
    ds.PixelData = np.rint((hu + 2048.0) / 2.0).astype(np.uint16).tobytes()
    ds.save_as(paths[3])
    with pytest.warns(UserWarning, match="unevenly spaced"):
        volume = read_dicom_series(tmp_path)
    assert volume.data.dtype == np.float32  # per-slice rescales: one float volume
    np.testing.assert_allclose(volume.data[:3], ct.image[:3])
    np.testing.assert_allclose(volume.data[3], np.rint((hu + 2048.0) / 2.0) * 2.0 - 2048.0)
    # a copy of a slice under another name: two slices at one position
    (tmp_path / "copy.dcm").write_bytes(paths[1].read_bytes())
    with pytest.raises(InputError, match="same position"):
        read_dicom_series(tmp_path)


def test_dicom_without_positions_warns_orders_by_instance_and_uses_spacing_1(ct, tmp_path):
    import pydicom

    paths = write_dicom_series(ct.image[:4], tmp_path, spacing=SPACING, file_names=["d", "b", "a", "c"])
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    with pytest.warns(UserWarning, match="no ImagePositionPatient.*InstanceNumber"):
        volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.data, ct.image[:4])
    np.testing.assert_allclose(volume.spacing, (1.0, 0.7, 0.7))


def test_labels_of_a_dicom_scan_are_written_as_nifti_in_its_geometry(ct, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    write_dicom_series(ct.image, folder, spacing=SPACING, origin=(-120.0, -90.0, 40.0))
    volume = read_dicom_series(folder)
    out = write_nifti(tmp_path / "seg.nii.gz", ct.lesions, volume.geometry)
    saved = nib.load(out)
    labels = np.asarray(saved.dataobj)  # NIfTI voxels (i, j, k) = (column, row, slice)
    np.testing.assert_array_equal(labels, ct.lesions.transpose(2, 1, 0))
    # voxel (i, j, k) lies at LPS (x0 + 0.7 i, y0 + 0.7 j, z0 + 2.5 k), i.e. RAS (-x, -y, z)
    i, j, k = 5, 7, 3
    np.testing.assert_allclose(saved.affine @ [i, j, k, 1], [120.0 - 0.7 * i, 90.0 - 0.7 * j, 40.0 + 2.5 * k, 1])
