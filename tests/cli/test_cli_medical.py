"""``napari-sam segment scan.nii.gz --window abdomen --out seg.nii.gz``: NIfTI in, NIfTI out, in the scan's geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_sam.cli import main
from napari_sam.engine.datasets.synthetic_ct import synthetic_ct, write_dicom_series

LOOSE = ["--pred-iou-thresh", "0", "--stability-thresh", "0", "--points-per-side", "4", "--no-progress"]


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    from napari_sam.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path / "tiny.pt")


@pytest.fixture
def scan(tmp_path):
    ct = synthetic_ct(shape=(5, 64, 80), n_lesions=1, seed=2)
    affine = np.diag([-0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (50.0, -20.0, 10.0)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct.image.transpose(2, 1, 0)), affine), path)
    return path


def test_segment_nifti_with_a_window_writes_nifti_in_the_scans_geometry(scan, tmp_path, checkpoint, capsys):
    out = tmp_path / "seg.nii.gz"
    argv = ["segment", str(scan), "--model", str(checkpoint), "--window", "abdomen", "--out", str(out), *LOOSE]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Abdomen / soft tissue (W 400, L 40: -160 to 240)" in captured.err
    saved, source = nib.load(out), nib.load(scan)
    assert saved.shape == source.shape
    np.testing.assert_array_equal(saved.affine, source.affine)
    labels = np.asarray(saved.dataobj)
    assert labels.max() >= 1 and f"{labels.max()} objects" in captured.out
    # an existing output is refused before any work, and is left as it was
    before = out.read_bytes()
    assert main(argv) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_window_changes_what_sam_sees(scan, tmp_path, checkpoint):
    outs = {}
    for window in ("400,40", "lung"):
        outs[window] = tmp_path / f"seg_{window.replace(',', '_')}.nii"
        assert main(["segment", str(scan), "--model", str(checkpoint), "--window", window,
                     "--out", str(outs[window]), *LOOSE]) == 0
    first, second = (np.asarray(nib.load(p).dataobj) for p in outs.values())
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("window, message", [("0,40", "width > 0"), ("kidney", "Unknown window 'kidney'")])
def test_bad_window_is_one_line_and_writes_nothing(scan, tmp_path, checkpoint, capsys, window, message):
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(scan), "--model", str(checkpoint), "--window", window, "--out", str(out), *LOOSE]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "tiny.pt"]


def test_dicom_folder_with_two_series_is_refused_naming_them(tmp_path, checkpoint, capsys):
    ct = synthetic_ct(shape=(2, 64, 64), n_lesions=1, seed=0)
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom_series(ct.image, folder, description="ARTERIAL", file_names=["a0.dcm", "a1.dcm"])
    write_dicom_series(ct.image, folder, description="VENOUS", series_number=2, file_names=["v0.dcm", "v1.dcm"])
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(folder), "--model", str(checkpoint), "--out", str(out), *LOOSE]) == 1
    err = capsys.readouterr().err
    assert "2 DICOM series" in err and "ARTERIAL" in err and "VENOUS" in err
    assert not out.exists()


def test_corrupt_nifti_is_one_line(tmp_path, checkpoint, capsys, scan):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(scan.read_bytes()[:200])
    assert main(["segment", str(bad), "--model", str(checkpoint), "--out", str(tmp_path / "o.nii.gz"), *LOOSE]) == 1
    err = capsys.readouterr().err
    assert "Cannot read bad.nii.gz as NIfTI" in err and "Traceback" not in err
