"""NIfTI through npe2 as napari calls it: read a CT with a non-trivial affine, write labels back."""

from __future__ import annotations

import nibabel as nib
import npe2
import numpy as np
import pytest
from napari.layers import Labels

from napari_sam._napari.medical_io import WINDOW_KEY
from napari_sam.engine.datasets.synthetic_ct import synthetic_ct
from napari_sam.engine.io.geometry import GEOMETRY_KEY

SPACING_MM = (0.7, 0.7, 2.5)  # voxel (i, j, k)
ORIGIN_RAS = (112.0, -64.0, -31.0)


@pytest.fixture(autouse=True)
def plugin(npe2pm):
    """npe2's test plugin manager (discovery blocked) with this plugin registered, as napari would find it."""
    npe2pm.register(npe2.PluginManifest.from_distribution("napari-sam"))
    return npe2pm


@pytest.fixture
def ct_file(tmp_path):
    """A synthetic CT saved with nibabel: i runs to the patient's left, j to anterior (flipped vs LPS), k up."""
    ct = synthetic_ct(shape=(10, 80, 96), n_lesions=2, seed=3)
    voxels = np.ascontiguousarray(ct.image[:, ::-1, :].transpose(2, 1, 0))  # (i, j, k)
    affine = np.diag([-SPACING_MM[0], SPACING_MM[1], SPACING_MM[2], 1.0])
    affine[:3, 3] = ORIGIN_RAS
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_slope_inter(1.0, 0.0)
    path = tmp_path / "scan.nii.gz"
    nib.save(image, path)
    return path, ct, voxels


def test_ct_opens_with_hu_and_physical_scale(ct_file):
    path, ct, _ = ct_file
    [(data, kwargs, kind)] = npe2.read([str(path)], stack=False, plugin_name="napari-sam")
    assert kind == "image"
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, ct.image)  # (z, y, x) = (superior, posterior, left), HU unchanged
    np.testing.assert_allclose(kwargs["scale"], (2.5, 0.7, 0.7), rtol=1e-6)
    j_last = ct.image.shape[1] - 1
    # world = LPS millimetres in (S, P, L) order: voxel (0, 0, 0) of the array is file voxel (0, j_last, 0)
    expected = (ORIGIN_RAS[2], -(ORIGIN_RAS[1] + SPACING_MM[1] * j_last), -ORIGIN_RAS[0])
    np.testing.assert_allclose(kwargs["translate"], expected, rtol=1e-6)
    assert kwargs["metadata"][GEOMETRY_KEY]["format"] == "nifti"
    lo, hi = kwargs["contrast_limits"]
    assert lo < -900 and hi > 100  # the percentile range SAM uses by default, shown as such


def test_labels_written_through_npe2_keep_the_scans_affine_and_voxels(ct_file, tmp_path):
    path, ct, voxels = ct_file
    [(data, kwargs, _)] = npe2.read([str(path)], stack=False, plugin_name="napari-sam")
    # a Labels layer over the image, as the annotator makes it: same transform and geometry metadata
    labels = Labels(ct.lesions.astype(np.uint32), scale=kwargs["scale"], translate=kwargs["translate"],
                    metadata={GEOMETRY_KEY: kwargs["metadata"][GEOMETRY_KEY]})
    out = tmp_path / "seg.nii.gz"
    written = npe2.write(str(out), [labels.as_layer_data_tuple()], plugin_name="napari-sam")
    assert [str(p) for p in written] == [str(out)]
    saved, scan = nib.load(out), nib.load(path)
    assert saved.shape == scan.shape
    np.testing.assert_array_equal(saved.affine, scan.affine)
    # the ground truth in the file's own voxel order, built independently of the plugin
    truth = ct.lesions[:, ::-1, :].transpose(2, 1, 0)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), truth)
    assert saved.get_data_dtype() == np.uint8
    # and each lesion lies on the scan's bright voxels
    assert voxels[truth > 0].mean() > 120


def test_labels_file_reads_back_as_labels(ct_file, tmp_path):
    path, ct, _ = ct_file
    [(_, kwargs, _)] = npe2.read([str(path)], stack=False, plugin_name="napari-sam")
    labels = Labels(ct.lesions, metadata=kwargs["metadata"], scale=kwargs["scale"], translate=kwargs["translate"])
    out = tmp_path / "seg.nii"
    npe2.write(str(out), [labels.as_layer_data_tuple()], plugin_name="napari-sam")
    [(data, back_kwargs, kind)] = npe2.read([str(out)], stack=False, plugin_name="napari-sam")
    assert kind == "labels"
    np.testing.assert_array_equal(data, ct.lesions)
    np.testing.assert_allclose(back_kwargs["translate"], kwargs["translate"], rtol=1e-6)


def test_labels_without_geometry_use_scale_and_translate(tmp_path):
    """A Labels layer made elsewhere: its scale/translate become an LPS-aligned affine (world = LPS, S-P-L)."""
    labels = Labels(np.zeros((4, 5, 6), dtype=np.uint8), scale=(3.0, 0.5, 0.8), translate=(10.0, -20.0, 30.0))
    labels.data[1, 2, 3] = 7
    out = tmp_path / "seg.nii.gz"
    npe2.write(str(out), [labels.as_layer_data_tuple()], plugin_name="napari-sam")
    saved = nib.load(out)
    i, j, k = np.argwhere(np.asarray(saved.dataobj) == 7)[0]
    ras = saved.affine @ [i, j, k, 1]
    world = labels.data_to_world((1, 2, 3))  # (S, P, L)
    np.testing.assert_allclose(ras[:3], (-world[2], -world[1], world[0]))


def test_reader_declines_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    from napari_sam._napari.medical_io import get_reader

    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files


def test_dicom_folder_through_npe2(tmp_path):
    from napari_sam.engine.datasets.synthetic_ct import write_dicom_series

    ct = synthetic_ct(shape=(5, 64, 64), n_lesions=1, seed=1)
    write_dicom_series(ct.image, tmp_path, spacing=(3.0, 0.8, 0.8), file_names=[f"{k}" for k in (3, 1, 4, 0, 2)],
                       window=(400, 40))
    [(data, kwargs, kind)] = npe2.read([str(tmp_path)], stack=False, plugin_name="napari-sam")
    assert kind == "image"
    np.testing.assert_array_equal(data, ct.image)
    np.testing.assert_allclose(kwargs["scale"], (3.0, 0.8, 0.8))
    assert kwargs["metadata"][GEOMETRY_KEY]["modality"] == "CT"
    # the series' own display window (W 400, L 40) is the abdomen preset: shown, and what SAM will see
    assert kwargs["metadata"][WINDOW_KEY] == "abdomen" and kwargs["contrast_limits"] == (-160.0, 240.0)
