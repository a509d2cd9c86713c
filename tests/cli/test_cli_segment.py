"""``napari-sam segment IMAGE --model ... --out labels.tif|.zarr``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.cli import main
from napari_sam.engine.automatic.segment import segment_everything
from napari_sam.engine.datasets.synthetic import synthetic_image

# a random-weight model proposes whole-window blobs: accept them so results are not empty
LOOSE = ["--pred-iou-thresh", "0", "--stability-thresh", "0", "--points-per-side", "4"]


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    from napari_sam.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path / "tiny.pt")


@pytest.fixture
def stack():
    return np.stack([synthetic_image((200, 240), seed=s, dtype=np.uint16).image for s in (1, 2)])


def _expected(stack, checkpoint):
    from napari_sam.model import load_model

    return segment_everything(
        stack, load_model(checkpoint, device="cpu"), points_per_side=4, pred_iou_thresh=0, stability_thresh=0
    )


def test_segment_tiff_to_tiff_with_progress(tmp_path, checkpoint, stack, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", stack)
    out = tmp_path / "labels.tif"
    assert main(["segment", str(tmp_path / "stack.tif"), "--model", str(checkpoint), "--out", str(out), *LOOSE]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err  # the progress bar reached the end (one tile per slice)
    labels = tifffile.imread(out)
    assert labels.dtype == np.int32 and labels.shape == stack.shape
    assert labels.max() >= 2
    assert f"{labels.max()} objects" in captured.out
    np.testing.assert_array_equal(labels, _expected(stack, checkpoint))


def test_segment_zarr_to_zarr(tmp_path, checkpoint, stack):
    import zarr

    source = zarr.open_array(
        str(tmp_path / "stack.zarr"), mode="w", shape=stack.shape, chunks=(1, 100, 100), dtype=stack.dtype
    )
    source[:] = stack
    out = tmp_path / "labels.zarr"
    image = str(tmp_path / "stack.zarr")
    argv = ["segment", image, "--model", str(checkpoint), "--out", str(out), "--no-progress", *LOOSE]
    assert main(argv) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], _expected(stack, checkpoint))
    # the output exists now: refused without --overwrite, replaced with it
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert main([*argv, "--overwrite"]) == 0


def test_bad_arguments_give_one_clear_line(tmp_path, checkpoint, stack, capsys):
    np.save(tmp_path / "plane.npy", stack[0])
    image = str(tmp_path / "plane.npy")
    with pytest.raises(SystemExit):
        main(["segment", image, "--model", str(checkpoint), "--out", str(tmp_path / "labels.png")])
    assert "--out must end in" in capsys.readouterr().err
    status = main(["segment", image, "--model", str(checkpoint), "--out", str(tmp_path / "l.tif"), "--tile-size", "64"])
    assert status == 1
    assert "smaller than the model's input" in capsys.readouterr().err
    status = main(["segment", image, "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.tif")])
    assert status == 1
    assert "missing.pt" in capsys.readouterr().err
