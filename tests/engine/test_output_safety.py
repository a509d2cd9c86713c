"""``segment_everything(..., out=path)`` never loses a user's data.

Existing outputs are refused unless ``overwrite=True`` and then replaced only once the
new result is complete; the input is never written over; an interrupted run leaves no
TIFF at the final path and a zarr marked incomplete that ``resume=True`` finishes to
exactly the labels of an uninterrupted run; folders, disks and corrupt inputs give one
clear ``InputError``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from napari_sam.engine.automatic.segment import segment_everything
from napari_sam.engine.datasets.synthetic import synthetic_image
from napari_sam.engine.errors import InputError

# 4 x 2 tiles of 256 px with a 32 px halo; thresholds the trained test model reaches
SHAPE = (768, 384)
SETTINGS = dict(tile_shape=256, halo=32, points_per_side=4, pred_iou_thresh=0.5)


@pytest.fixture(scope="module")
def image():
    return synthetic_image(SHAPE, seed=5).image


@pytest.fixture(scope="module")
def model(trained_model_path):
    from napari_sam.model import load_model

    return load_model(trained_model_path, device="cpu")


@pytest.fixture(scope="module")
def reference(image, model):
    """The labels of one uninterrupted run, in memory."""
    labels = segment_everything(image, model, **SETTINGS)
    assert labels.max() >= 10  # real objects: comparisons below are not between empty images
    return labels


@pytest.fixture(scope="module")
def small_reference(image, model):
    """The labels of the image's top 256 rows (two tiles side by side)."""
    labels = segment_everything(image[:256], model, **SETTINGS)
    assert labels.max() >= 3
    return labels


def _stop_after(n_tiles: int):
    def progress(done, total):
        if done >= n_tiles:
            raise KeyboardInterrupt

    return progress


def _folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _bytes_of(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (a file or a directory) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _zarr_info(path: Path) -> dict:
    import zarr

    return dict(zarr.open_array(str(path), mode="r").attrs)["napari_sam"]


# ----------------------------------------------------------------------------- existing outputs


@pytest.mark.parametrize("name", ["labels.tif", "labels.zarr"])
def test_an_existing_output_is_refused_without_overwrite(tmp_path, image, model, name):
    out = tmp_path / name
    segment_everything(image[:256, :256], model, out=out, **SETTINGS)
    before = _bytes_of(out)
    with pytest.raises(InputError, match="overwrite"):
        segment_everything(image, model, out=out, **SETTINGS)
    assert _bytes_of(out) == before


@pytest.mark.parametrize("name", ["labels.tif", "labels.zarr"])
def test_overwrite_replaces_the_output_only_once_the_new_one_is_complete(
    tmp_path, image, model, small_reference, name
):
    import tifffile
    import zarr

    out = tmp_path / name
    segment_everything(image[:256, :256], model, out=out, **SETTINGS)
    before = _bytes_of(out)
    with pytest.raises(KeyboardInterrupt):
        segment_everything(image[:256], model, out=out, overwrite=True, progress=_stop_after(1), **SETTINGS)
    assert _bytes_of(out) == before  # the old result is untouched by the interrupted replacement
    assert _folder_listing(tmp_path) == [name]  # and nothing temporary is left beside it
    labels = segment_everything(image[:256], model, out=out, overwrite=True, **SETTINGS)
    on_disk = zarr.open_array(str(out), mode="r")[:] if name.endswith(".zarr") else tifffile.imread(out)
    np.testing.assert_array_equal(on_disk, small_reference)
    np.testing.assert_array_equal(np.asarray(labels[:]), small_reference)
    assert _folder_listing(tmp_path) == [name]


# ----------------------------------------------------------------------------- the input is sacred


def test_the_input_is_never_written_over(tmp_path, image, model):
    import tifffile
    import zarr

    tif = tmp_path / "image.tif"
    tifffile.imwrite(tif, image)
    tif_bytes = tif.read_bytes()
    with pytest.raises(InputError, match="input"):
        segment_everything(tif, model, out=tif, overwrite=True, **SETTINGS)
    with pytest.raises(InputError, match="input"):  # the same file through another spelling of its path
        segment_everything(tif, model, out=tmp_path / "sub" / ".." / "image.tif", overwrite=True, **SETTINGS)
    assert tif.read_bytes() == tif_bytes

    source = tmp_path / "image.zarr"
    zarr.open_array(str(source), mode="w", shape=image.shape, chunks=(128, 128), dtype=image.dtype)[:] = image
    before = _bytes_of(source)
    for out in (source, source / "labels.zarr"):  # the input itself, or an output inside its folder tree
        with pytest.raises(InputError, match="input"):
            segment_everything(source, model, out=out, overwrite=True, **SETTINGS)
    # the reverse: an output folder that holds the input
    inner = tmp_path / "outer.zarr" / "image.tif"
    inner.parent.mkdir()
    tifffile.imwrite(inner, image)
    with pytest.raises(InputError, match="input"):
        segment_everything(inner, model, out=tmp_path / "outer.zarr", overwrite=True, **SETTINGS)
    assert _bytes_of(source) == before and inner.exists()
    # an opened input array knows its file too
    with pytest.raises(InputError, match="input"):
        segment_everything(tifffile.memmap(tif, mode="r"), model, out=tif, overwrite=True, **SETTINGS)
    assert tif.read_bytes() == tif_bytes


# ----------------------------------------------------------------------------- interrupted runs


def test_an_interrupted_tiff_run_leaves_no_file_behind(tmp_path, image, model):
    out = tmp_path / "labels.tif"
    with pytest.raises(KeyboardInterrupt):
        segment_everything(image, model, out=out, progress=_stop_after(1), **SETTINGS)
    assert _folder_listing(tmp_path) == []


def test_an_interrupted_zarr_run_is_marked_incomplete_and_resumes_to_the_same_labels(
    tmp_path, image, model, reference
):
    import zarr

    out = tmp_path / "labels.zarr"
    with pytest.raises(KeyboardInterrupt):
        segment_everything(image, model, out=out, progress=_stop_after(7), **SETTINGS)
    info = _zarr_info(out)
    assert info["complete"] is False
    # 7 tiles arrived; tile k is painted once its neighbours (k + 3 the last) are in: tiles 0-3
    assert info["tiles_done"] == 4 and info["tiles_total"] == 8
    partial = zarr.open_array(str(out), mode="r")[:]
    assert 0 < partial.max() < reference.max()

    # a rerun without resume (or overwrite) is refused and says how to continue
    with pytest.raises(InputError, match="resume"):
        segment_everything(image, model, out=out, **SETTINGS)
    # other settings cannot resume this run
    with pytest.raises(InputError, match="halo"):
        segment_everything(image, model, out=out, resume=True, **{**SETTINGS, "halo": 40})

    calls = []
    record = lambda done, total: calls.append((done, total))  # noqa: E731
    labels = segment_everything(image, model, out=out, resume=True, progress=record, **SETTINGS)
    # resuming re-segments the 4 unpainted tiles and the 2 painted ones next to them, not all 8
    assert calls == [(3, 8), (4, 8), (5, 8), (6, 8), (7, 8), (8, 8)]
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], reference)
    np.testing.assert_array_equal(np.asarray(labels[:]), reference)
    assert _zarr_info(out)["complete"] is True and _zarr_info(out)["tiles_done"] == 8
    # resuming a complete run has nothing to do
    calls.clear()
    segment_everything(image, model, out=out, resume=True, progress=record, **SETTINGS)
    assert calls == []


def test_resume_refuses_another_image_of_the_same_shape_and_dtype(tmp_path, image, model):
    out = tmp_path / "labels.zarr"
    with pytest.raises(KeyboardInterrupt):
        segment_everything(image, model, out=out, progress=_stop_after(7), **SETTINGS)
    other = np.flipud(image).copy()  # same shape, dtype and intensity range, other pixels
    with pytest.raises(InputError, match="another image"):
        segment_everything(other, model, out=out, resume=True, **SETTINGS)
    assert _zarr_info(out)["tiles_done"] == 4  # the partial run is left as it was


def test_an_interrupted_stack_resumes_with_ids_unique_across_slices(tmp_path, model):
    import zarr

    stack = np.stack([synthetic_image((256, 384), seed=s).image for s in (1, 2)])  # 2 tiles per slice
    whole = segment_everything(stack, model, **SETTINGS)
    out = tmp_path / "stack.zarr"
    with pytest.raises(KeyboardInterrupt):
        segment_everything(stack, model, out=out, progress=_stop_after(3), **SETTINGS)
    assert _zarr_info(out)["tiles_done"] == 2  # the first slice
    segment_everything(stack, model, out=out, resume=True, **SETTINGS)
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], whole)


def test_a_new_zarr_interrupted_before_any_tile_was_painted_is_removed(tmp_path, image, model):
    with pytest.raises(KeyboardInterrupt):
        segment_everything(image, model, out=tmp_path / "labels.zarr", progress=_stop_after(1), **SETTINGS)
    assert _folder_listing(tmp_path) == []


def test_resume_needs_a_zarr_output(tmp_path, image, model):
    with pytest.raises(InputError, match="zarr"):
        segment_everything(image, model, out=tmp_path / "labels.tif", resume=True, **SETTINGS)


# ----------------------------------------------------------------------------- folders and disks


@pytest.mark.parametrize("name", ["labels.tif", "labels.zarr"])
def test_a_missing_output_folder_is_a_clear_error(tmp_path, image, model, name):
    with pytest.raises(InputError, match="does not exist"):
        segment_everything(image, model, out=tmp_path / "missing" / name, **SETTINGS)
    assert _folder_listing(tmp_path) == []


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path, image, model, monkeypatch):
    from napari_sam.engine.io import safe_write

    folder = tmp_path / "locked"
    folder.mkdir()

    def refuse(*args, **kwargs):  # what creating a file in a read-only folder raises (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied", str(folder / "probe"))

    monkeypatch.setattr(safe_write.tempfile, "mkstemp", refuse)
    with pytest.raises(InputError, match="read-only"):
        segment_everything(image, model, out=folder / "labels.tif", **SETTINGS)
    assert _folder_listing(folder) == []


def test_a_tiff_that_does_not_fit_on_the_disk_is_refused_before_writing(tmp_path, image, model, monkeypatch):
    import shutil

    from napari_sam.engine.io import safe_write

    real = shutil.disk_usage
    monkeypatch.setattr(safe_write.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    with pytest.raises(InputError, match="free"):
        segment_everything(image, model, out=tmp_path / "labels.tif", **SETTINGS)
    assert _folder_listing(tmp_path) == []


def test_space_that_cannot_be_reserved_is_a_clear_error(tmp_path, image, model, monkeypatch):
    # a memory-mapped TIFF on a full disk died with SIGBUS: its space is reserved before mapping
    from napari_sam.engine.io import outputs

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "posix_fallocate", full, raising=False)
    with pytest.raises(InputError, match="full"):
        segment_everything(image, model, out=tmp_path / "labels.tif", **SETTINGS)
    assert _folder_listing(tmp_path) == []


def test_a_full_disk_during_a_zarr_run_is_a_clear_error_and_the_run_resumes(
    tmp_path, image, model, small_reference, monkeypatch
):
    import zarr

    from napari_sam.engine.automatic.stitching import Stitcher

    real_paint, painted = Stitcher._paint, []

    def paint_until_full(self, kept):
        if painted:
            raise OSError(errno.ENOSPC, "No space left on device")
        painted.append(1)
        real_paint(self, kept)

    monkeypatch.setattr(Stitcher, "_paint", paint_until_full)
    out = tmp_path / "labels.zarr"
    with pytest.raises(InputError, match="full.*resume"):
        segment_everything(image[:256], model, out=out, **SETTINGS)
    assert _zarr_info(out)["complete"] is False and _zarr_info(out)["tiles_done"] == 1
    monkeypatch.setattr(Stitcher, "_paint", real_paint)
    segment_everything(image[:256], model, out=out, resume=True, **SETTINGS)
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], small_reference)


# ----------------------------------------------------------------------------- corrupt inputs


def _corrupt_tiffs(folder: Path, image: np.ndarray) -> list[Path]:
    import tifffile

    plain, tiled = folder / "plain.tif", folder / "tiled.tif"
    tifffile.imwrite(plain, image)
    tifffile.imwrite(tiled, image, tile=(64, 64), compression="zlib")
    truncated = folder / "truncated.tif"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    damaged = bytearray(tiled.read_bytes())
    middle = len(damaged) // 3
    damaged[middle : middle + 2000] = bytes((b * 7 + 13) % 256 for b in damaged[middle : middle + 2000])
    (folder / "damaged.tif").write_bytes(bytes(damaged))
    (folder / "garbage.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.tif").write_bytes(b"")
    return [truncated, folder / "damaged.tif", folder / "garbage.tif", folder / "empty.tif"]


def test_corrupt_tiff_inputs_give_an_input_error_naming_the_file(tmp_path, image, model):
    from napari_sam.engine.io.images import open_image, read_image_file, read_window

    for path in _corrupt_tiffs(tmp_path, image):
        with pytest.raises(InputError, match=path.name):
            read_window(open_image(path), (0, SHAPE[0], 0, SHAPE[1]))
        with pytest.raises(InputError, match=path.name):
            read_image_file(path)
        with pytest.raises(InputError, match=path.name):
            segment_everything(path, model, out=tmp_path / "labels.tif", **SETTINGS)
        assert not (tmp_path / "labels.tif").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left
