"""Segment everything with a SAM 2 model: in one process, on Dask workers, and from the CLI.

A tiny SAM 2 (``tiny_sam2_test``, deterministic random weights). Random weights propose blobs of
any quality, so the filters are opened (thresholds 0) and the checks are on the plumbing: the
same labels whichever way the tiles run, objects found, the high-resolution features used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.cli import main
from napari_sam.engine.automatic.segment import segment_everything

_spec = importlib.util.spec_from_file_location("_sam2_auto_weights", Path(__file__).parents[1] / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

LOOSE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0)


@pytest.fixture(scope="module")
def sam2_model():
    from napari_sam.model import build_sam2
    from napari_sam.model.config import TINY_SAM2

    return W.load_deterministic_weights(build_sam2(TINY_SAM2), seed=1).eval()


@pytest.fixture(scope="module")
def image():
    return W.synthetic_cells_image(230, 250, seed=3)  # one window: random blobs touch every tile edge


def test_tiled_segment_everything_runs_a_sam2_model_and_uses_its_high_res_features(sam2_model, image):
    labels = segment_everything(image, sam2_model, **LOOSE)
    assert labels.shape == image.shape[:2]
    assert labels.max() > 0

    # the decoder's high-resolution path matters: zeroing it changes what is found
    conv = sam2_model.sam_mask_decoder.conv_s0
    saved = conv.weight.detach().clone(), conv.bias.detach().clone()
    with torch.no_grad():
        conv.weight.mul_(4.0)
        conv.bias.add_(3.0)
    try:
        changed = segment_everything(image, sam2_model, **LOOSE)
    finally:
        with torch.no_grad():
            conv.weight.copy_(saved[0])
            conv.bias.copy_(saved[1])
    assert not np.array_equal(changed, labels)


def test_a_sam2_model_runs_tiled_windows(sam2_model):
    big = W.synthetic_cells_image(300, 420, seed=4)  # 2 x 3 windows, each embedded on its own
    labels = segment_everything(big, sam2_model, tile_shape=256, halo=32, **LOOSE)
    assert labels.shape == big.shape[:2] and labels.dtype == np.int32


def test_a_sam2_model_ships_to_dask_workers(sam2_model):
    from napari_sam.engine.automatic.dask_runner import ModelSpec
    from napari_sam.model.sam2 import Sam2

    rebuilt = ModelSpec.from_model(sam2_model).build()
    assert isinstance(rebuilt, Sam2)
    for name, tensor in sam2_model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name


def test_cli_segment_with_a_sam2_checkpoint(tmp_path, sam2_model, image):
    import tifffile

    checkpoint = tmp_path / "tiny_sam2.pt"
    torch.save({"model": sam2_model.state_dict()}, checkpoint)  # Meta's file layout
    tifffile.imwrite(tmp_path / "image.tif", image)
    out = tmp_path / "labels.tif"
    status = main([
        "segment", str(tmp_path / "image.tif"), "--model", str(checkpoint), "--out", str(out),
        "--pred-iou-thresh", "0", "--stability-thresh", "0", "--points-per-side", "4", "--device", "cpu",
    ])
    assert status == 0
    expected = segment_everything(image, sam2_model, device="cpu", **LOOSE)
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_cli_finetune_starts_from_a_random_sam2_architecture(tmp_path, capsys):
    import tifffile

    from napari_sam.engine.datasets.synthetic import synthetic_dataset
    from napari_sam.model import load_model
    from napari_sam.model.sam2 import Sam2

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for index, sample in enumerate(synthetic_dataset(1, shape=(80, 80), seed=61)):
        tifffile.imwrite(tmp_path / "images" / f"img{index}.tif", sample.image)
        tifffile.imwrite(tmp_path / "labels" / f"img{index}.tif", sample.labels)
    output = tmp_path / "from_scratch.pt"
    status = main([
        "finetune", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
        "--output", str(output), "--config", "tiny_sam2_test", "--steps", "1", "--images-per-step", "1",
        "--objects-per-image", "1", "--correction-iterations", "1", "--device", "cpu",
    ])
    assert status == 0, capsys.readouterr()
    assert isinstance(load_model(output, device="cpu"), Sam2)


def test_sam2_has_no_instance_decoder_so_segment_everything_uses_prompts():
    from napari_sam.engine.automatic.params import resolve_method
    from napari_sam.engine.errors import InputError
    from napari_sam.model.checkpoint import build_model
    from napari_sam.model.config import TINY_SAM2

    model = build_model(TINY_SAM2)
    assert model.instance_decoder is None
    assert resolve_method(None, model) == "amg"
    with pytest.raises(InputError, match="instance decoder"):
        resolve_method("instance", model)
