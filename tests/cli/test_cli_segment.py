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


def test_segment_zarr_to_zarr(tmp_path, checkpoint, stack, capsys):
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
    # the output exists now: refused without --overwrite (one line saying so), replaced with it
    capsys.readouterr()
    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], _expected(stack, checkpoint))


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


# ----------------------------------------------------------------------------- nothing is lost


@pytest.fixture
def existing_output(tmp_path, checkpoint, stack):
    """An earlier run's labels.tif, and its bytes."""
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "labels.tif"
    argv = ["segment", str(tmp_path / "stack.npy"), "--model", str(checkpoint), "--out", str(out), "--no-progress"]
    assert main([*argv, *LOOSE]) == 0
    return out, out.read_bytes()


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return str(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda argv, tmp: [tmp / "missing.npy" if a == str(tmp / "stack.npy") else a for a in argv], "missing.npy"),
        (lambda argv, tmp: [*argv, "--model", str(tmp / "missing.pt")], "missing.pt"),
        (lambda argv, tmp: [*argv, "--model", _garbage(tmp / "bad.pt")], "bad.pt"),
        (lambda argv, tmp: [*argv, "--halo", "200"], "halo"),
        (lambda argv, tmp: [*argv, "--tile-size", "64"], "smaller than the model"),
        (lambda argv, tmp: [*argv, "--min-area", "-1"], "min_area"),
    ],
    ids=["missing-input", "missing-model", "unreadable-model", "bad-halo", "bad-tile", "bad-min-area"],
)
def test_overwrite_keeps_the_old_output_when_anything_is_wrong(
    tmp_path, checkpoint, existing_output, change, words, capsys
):
    out, before = existing_output
    image = str(tmp_path / "stack.npy")
    argv = ["segment", image, "--model", str(checkpoint), "--out", str(out), "--overwrite", *LOOSE]
    argv = [str(a) for a in change(argv, tmp_path)]
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as usage:  # usage errors exit with status 2 through argparse
        status = usage.code
    assert status in (1, 2)
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert out.read_bytes() == before


def test_the_input_is_never_deleted_or_written_over(tmp_path, checkpoint, stack, capsys):
    import tifffile

    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, stack)
    before = image.read_bytes()
    argv = ["segment", str(image), "--model", str(checkpoint), "--out", str(image), "--overwrite", *LOOSE]
    assert main(argv) == 1
    assert "input" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_an_interrupted_run_says_how_to_resume_and_resume_finishes_it(
    tmp_path, checkpoint, stack, capsys, monkeypatch
):
    import zarr

    from napari_sam.engine.automatic import segment as engine_segment

    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "labels.zarr"
    image = str(tmp_path / "stack.npy")
    argv = ["segment", image, "--model", str(checkpoint), "--out", str(out), "--no-progress", *LOOSE]
    real_run_steps = engine_segment.run_steps

    def ctrl_c_after_one_tile(steps, progress=None):
        def stop(done, total):
            if done >= 1:
                raise KeyboardInterrupt

        return real_run_steps(steps, stop)

    monkeypatch.setattr(engine_segment, "run_steps", ctrl_c_after_one_tile)
    assert main(argv) == 130  # one slice (one tile) done, the second not
    assert "1 of 2 tiles" in capsys.readouterr().err
    assert zarr.open_array(str(out), mode="r").attrs["napari_sam"]["complete"] is False
    monkeypatch.setattr(engine_segment, "run_steps", real_run_steps)
    assert main(argv) == 1  # exists, incomplete: neither replaced nor continued silently
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], _expected(stack, checkpoint))


# ----------------------------------------------------------------------------- one clear line, no traceback


def test_a_corrupt_input_and_a_missing_output_folder_are_one_line(tmp_path, checkpoint, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    status = main(["segment", str(bad), "--model", str(checkpoint), "--out", str(tmp_path / "l.tif")])
    err = capsys.readouterr().err
    assert status == 1 and "broken.tif" in err and "Traceback" not in err
    np.save(tmp_path / "plane.npy", np.zeros((256, 256), np.uint8))
    status = main(["segment", str(tmp_path / "plane.npy"), "--model", str(checkpoint),
                   "--out", str(tmp_path / "no" / "such" / "l.zarr")])
    err = capsys.readouterr().err
    assert status == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_a_failed_download_is_one_line(tmp_path, monkeypatch, capsys):
    from napari_sam.model import zoo
    from napari_sam.model.errors import DownloadError

    def offline(name, progress=True):
        raise DownloadError(f"Could not download model {name!r}: no network. Place the file by hand.")

    monkeypatch.setattr(zoo, "fetch_checkpoint", offline)
    np.save(tmp_path / "plane.npy", np.zeros((256, 256), np.uint8))
    status = main(["segment", str(tmp_path / "plane.npy"), "--model", "vit_t", "--out", str(tmp_path / "l.tif")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("napari-sam segment: error: Could not download model 'vit_t'") and "Traceback" not in err


def test_a_device_that_is_not_there_is_one_line(tmp_path, checkpoint, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.save(tmp_path / "plane.npy", np.zeros((256, 256), np.uint8))
    argv = ["segment", str(tmp_path / "plane.npy"), "--model", str(checkpoint), "--out", str(tmp_path / "l.tif")]
    status = main([*argv, "--device", "cuda"])
    err = capsys.readouterr().err
    assert status == 1 and "cuda" in err and "no usable CUDA" in err and "Traceback" not in err
    assert not (tmp_path / "l.tif").exists()


# ----------------------------------------------------------------------------- options


def test_automatic_options_take_their_defaults_from_automatic_params(capsys):
    from napari_sam.cli import build_parser
    from napari_sam.engine.automatic.params import AutomaticParams

    defaults = AutomaticParams()
    args = build_parser().parse_args(["segment", "in.tif", "--model", "m.pt", "--out", "o.zarr"])
    for field in ("points_per_side", "pred_iou_thresh", "stability_thresh", "nms_thresh", "min_area", "nested_thresh",
                  "points_per_batch"):
        assert getattr(args, field) == getattr(defaults, field), field
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {defaults.pred_iou_thresh})" in help_text
    assert f"(default: {defaults.points_per_side})" in help_text
    assert "tile - 2 * halo" in help_text  # --halo says what the code does


def test_a_damaged_tiled_tiff_gives_exactly_one_line_in_a_fresh_process(tmp_path, checkpoint):
    """A damaged tile fails inside zarr's asyncio reads; the abandoned sibling reads must not add
    pages of asyncio noise (printed at interpreter exit) after the one-line error."""
    import subprocess
    import sys

    import tifffile

    image = (synthetic_image((512, 512), seed=5).image * 200).astype(np.uint16)  # 64 tiles, read concurrently
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(64, 64), compression="zlib")
    data = bytearray((tmp_path / "tiled.tif").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes((b * 7 + 13) % 256 for b in data[middle : middle + 3000])
    (tmp_path / "damaged.tif").write_bytes(bytes(data))
    argv = ["segment", str(tmp_path / "damaged.tif"), "--model", str(checkpoint), "--out", str(tmp_path / "l.tif")]
    result = subprocess.run([sys.executable, "-m", "napari_sam.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("napari-sam segment: error: Could not read") and "damaged.tif" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.tif", "tiled.tif", "tiny.pt"]


def test_the_end_says_what_each_filter_rejected_and_which_thresholds_to_try(trained_model_path, tmp_path, capsys):

    import tifffile

    trained = trained_model_path
    tifffile.imwrite(tmp_path / "nuclei.tif", synthetic_image((256, 256), seed=41).image)
    out = tmp_path / "labels.tif"
    argv = ["segment", str(tmp_path / "nuclei.tif"), "--model", str(trained), "--out", str(out)]
    assert main([*argv, "--no-progress", "--points-per-side", "8", "--device", "cpu", "--method", "amg"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("0 objects")  # SAM's 0.88 keeps nothing of this model's masks...
    assert lines[1].startswith("192 masks decoded: 19")  # 8 x 8 points, 3 masks each, nearly all...
    assert "below predicted IoU 0.88" in lines[1] and lines[1].endswith("0 kept.")  # ...below SAM's threshold
    assert lines[2].startswith("Try --pred-iou-thresh 0.")  # ...and the CLI says which option to change
    assert len(lines) == 3


# ------------------------------------------------------------------ --method
# random decoder weights: its smoothed foreground map lies around 0.57; above 0.55 its maps make objects
LOOSE_INSTANCE = ["--foreground-threshold", "0.55", "--center-distance-threshold", "0.5"]


@pytest.fixture
def decoder_checkpoint(tmp_path):
    """A random-weight tiny SAM with an instance decoder, saved as a checkpoint file."""
    import dataclasses

    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.checkpoint import save_checkpoint
    from napari_sam.model.config import CONFIGS, InstanceDecoderConfig

    base = CONFIGS["tiny_vit_test"]
    config = dataclasses.replace(
        base, instance_decoder=InstanceDecoderConfig(embed_dim=base.prompt_embed_dim, initial_features=8)
    )
    torch.manual_seed(0)
    return save_checkpoint(build_sam(config).eval(), tmp_path / "decoder.pt")


def test_method_instance_writes_the_engines_instance_labels_and_is_the_default_with_a_decoder(
    tmp_path, decoder_checkpoint, stack, capsys
):
    import tifffile

    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.model import load_model

    tifffile.imwrite(tmp_path / "stack.tif", stack)
    base = ["segment", str(tmp_path / "stack.tif"), "--model", str(decoder_checkpoint), "--no-progress",
            *LOOSE_INSTANCE, "--min-size", "20"]
    assert main([*base, "--out", str(tmp_path / "instance.tif"), "--method", "instance"]) == 0
    out = capsys.readouterr().out
    labels = tifffile.imread(tmp_path / "instance.tif")
    expected = segment_everything(
        stack, load_model(decoder_checkpoint, device="cpu"), method="instance",
        instance_params=InstanceParams(foreground_threshold=0.55, center_distance_threshold=0.5, min_size=20),
    )
    assert expected.max() >= 2
    np.testing.assert_array_equal(labels, expected)
    assert f"{labels.max()} objects" in out and "masks decoded" not in out  # no AMG filter report
    # without --method, a model with a decoder runs instance mode
    assert main([*base, "--out", str(tmp_path / "default.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "default.tif"), expected)
    # --method amg on the same model decodes prompts instead (and says what its filters did)
    capsys.readouterr()
    argv = ["segment", str(tmp_path / "stack.tif"), "--model", str(decoder_checkpoint), "--no-progress",
            "--out", str(tmp_path / "amg.tif"), "--method", "amg", *LOOSE]
    assert main(argv) == 0
    assert "masks decoded" in capsys.readouterr().out


def test_decoder_attaches_a_separate_decoder_file_to_a_model_without_one(
    tmp_path, checkpoint, decoder_checkpoint, stack, capsys
):
    """micro-sam publishes a model and its decoder as two files: --decoder attaches the second."""
    import tifffile

    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.model import load_model

    np.save(tmp_path / "plane.npy", stack[0])
    base = ["segment", str(tmp_path / "plane.npy"), "--model", str(checkpoint), "--no-progress", *LOOSE_INSTANCE]
    assert main([*base, "--decoder", str(decoder_checkpoint), "--out", str(tmp_path / "labels.tif")]) == 0
    expected = segment_everything(
        stack[0], load_model(checkpoint, device="cpu", decoder=decoder_checkpoint), method="instance",
        instance_params=InstanceParams(foreground_threshold=0.55, center_distance_threshold=0.5),
    )
    assert expected.max() >= 2
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), expected)  # instance mode: the default
    capsys.readouterr()
    missing = tmp_path / "nowhere_decoder.pt"
    assert main([*base, "--decoder", str(missing), "--out", str(tmp_path / "b.tif")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere_decoder.pt" in err and not (tmp_path / "b.tif").exists()


def test_method_mistakes_are_one_clear_line(tmp_path, checkpoint, decoder_checkpoint, stack, capsys):
    np.save(tmp_path / "plane.npy", stack[0])
    base = ["segment", str(tmp_path / "plane.npy"), "--no-progress"]
    # instance mode on a model without decoder: which models have one
    assert main([*base, "--model", str(checkpoint), "--out", str(tmp_path / "a.tif"), "--method", "instance"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instance decoder, e.g. vit_b_lm" in err
    # an instance threshold with --method amg would be ignored: said, not ignored
    argv = [*base, "--model", str(decoder_checkpoint), "--out", str(tmp_path / "b.tif"), "--method", "amg",
            "--foreground-threshold", "0.3"]
    with pytest.raises(SystemExit):
        main(argv)
    assert "--foreground-threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--model", str(checkpoint), "--out", str(tmp_path / "c.tif"), "--method", "watershed"])
    assert "invalid choice: 'watershed'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.pt", "plane.npy", "tiny.pt"]


def test_instance_options_take_their_defaults_from_instance_params(capsys):
    from napari_sam.engine.automatic.instance import InstanceParams

    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    defaults = InstanceParams()
    for option, field in (("--foreground-threshold", "foreground_threshold"), ("--min-size", "min_size"),
                          ("--distance-smoothing", "distance_smoothing")):
        assert option in help_text and f"(default: {getattr(defaults, field)})" in help_text
    assert "--method {instance,amg}" in help_text


def test_int8_precision_runs_on_the_cpu(tmp_path, checkpoint, stack, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", stack[0])
    out = tmp_path / "labels.tif"
    argv = ["segment", str(tmp_path / "stack.tif"), "--model", str(checkpoint), "--out", str(out), *LOOSE]
    assert main([*argv, "--device", "cpu", "--precision", "int8"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == stack.shape[1:] and labels.max() >= 1
