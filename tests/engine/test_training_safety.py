"""Fine-tuning as a careless or unlucky user runs it: diverging runs, existing outputs, bad options,
resuming from the wrong files, ambiguous or unusual label data. Tiny model, a few steps each."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_sam.engine.datasets.synthetic import synthetic_dataset, synthetic_image
from napari_sam.engine.errors import InputError
from napari_sam.engine.training.data import load_folder_pairs, validate_pair
from napari_sam.engine.training.loop import (
    FinetuneOptions,
    evaluate_with_predictor,
    finetune,
    run_finetune,
    training_state_path,
)
from napari_sam.model.checkpoint import save_checkpoint


def _options(**overrides) -> FinetuneOptions:
    settings = {
        "steps": 3, "images_per_step": 1, "objects_per_image": 2, "correction_iterations": 0,
        "learning_rate": 1e-3, "warmup_steps": 1, "validate_every": 100, "checkpoint_every": 1, "seed": 0,
        "device": "cpu",
    }
    settings.update(overrides)
    return FinetuneOptions(**settings)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(2, shape=(64, 64), seed=11)


@pytest.fixture
def single_thread():
    """One torch thread: multi-threaded CPU reductions differ in the last bits from run to run, and Adam
    turns last-bit noise in a zero gradient (e.g. an attention key bias) into a full-size update."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


def _write_folder(root, count: int = 1, seed: int = 60):
    import tifffile

    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for index, sample in enumerate(synthetic_dataset(count, shape=(64, 64), seed=seed)):
        tifffile.imwrite(images / f"img{index}.tif", sample.image)
        tifffile.imwrite(labels / f"img{index}.tif", sample.labels)
    return images, labels


def _cli(tmp_path, output, *extra):
    from napari_sam.cli import main

    images, labels = _write_folder(tmp_path / "train")
    return main([
        "finetune", "--images", str(images), "--labels", str(labels), "--output", str(output),
        "--config", "tiny_vit_test", "--steps", "3", "--images-per-step", "1", "--objects-per-image", "2",
        "--correction-iterations", "0", "--device", "cpu", *extra,
    ])


# ----------------------------------------------------------------------------- item 3: divergence


def test_a_diverging_run_stops_with_advice_and_keeps_the_good_checkpoint(tmp_path, tiny_model, data):
    good = save_checkpoint(tiny_model, tmp_path / "model.pt")
    before = good.read_bytes()
    with pytest.raises(InputError, match="learning rate") as info:
        run_finetune(tiny_model, data, None, _options(steps=6, learning_rate=1e6), checkpoint_path=good,
                     overwrite=True)
    assert "fp32" in str(info.value)
    assert good.read_bytes() == before  # the good model was not replaced
    state = training_state_path(good)
    if state.exists():  # an intermediate checkpoint may exist; it must hold finite weights only
        assert _all_finite(torch.load(state, weights_only=True)["model"])


def test_cli_diverging_run_exits_1_and_keeps_the_output(tmp_path, tiny_model, capsys):
    good = save_checkpoint(tiny_model, tmp_path / "model.pt")
    before = good.read_bytes()
    status = _cli(tmp_path, good, "--lr", "1e6", "--steps", "6", "--overwrite")
    assert status == 1
    err = capsys.readouterr().err
    assert "learning rate" in err and "Traceback" not in err
    assert good.read_bytes() == before


def test_non_finite_weights_are_never_saved(tmp_path, tiny_model):
    from napari_sam.model.errors import CheckpointError

    with torch.no_grad():
        next(tiny_model.mask_decoder.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        save_checkpoint(tiny_model, tmp_path / "nan.pt")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- item 3: existing outputs


def test_finetune_refuses_an_existing_output_without_resume_or_overwrite(tmp_path, tiny_model, data):
    existing = save_checkpoint(tiny_model, tmp_path / "model.pt")
    before = existing.read_bytes()
    with pytest.raises(InputError, match="already exists.*overwrite"):
        run_finetune(tiny_model, data, None, _options(), checkpoint_path=existing)
    assert existing.read_bytes() == before
    # an interrupted run (only its train state there) is not silently restarted either
    interrupted = tmp_path / "other.pt"
    training_state_path(interrupted).write_bytes(b"state")
    with pytest.raises(InputError, match="resume.*overwrite"):
        run_finetune(tiny_model, data, None, _options(), checkpoint_path=interrupted)
    with pytest.raises(InputError, match="not both"):
        finetune(tiny_model, data, None, _options(), checkpoint_path=existing, resume=True, overwrite=True)


def test_cli_refuses_an_existing_output(tmp_path, tiny_model, capsys):
    existing = save_checkpoint(tiny_model, tmp_path / "model.pt")
    before = existing.read_bytes()
    assert _cli(tmp_path, existing) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == before


def test_overwrite_replaces_the_output_only_when_the_run_is_complete(tmp_path, tiny_model, data):
    from napari_sam.model import load_model

    existing = save_checkpoint(tiny_model, tmp_path / "model.pt")
    before = existing.read_bytes()
    reports = []
    for report in finetune(tiny_model, data, None, _options(steps=3), checkpoint_path=existing, overwrite=True):
        if not report.done:
            assert existing.read_bytes() == before, f"replaced at step {report.step}, before the run ended"
        reports.append(report)
    assert [r.checkpoint for r in reports if r.checkpoint] == [str(training_state_path(existing))] * 2 + [
        str(existing)]
    assert existing.read_bytes() != before
    loaded = load_model(existing, device="cpu").state_dict()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- item 7: options


@pytest.mark.parametrize("name", ["checkpoint_every", "validate_every"])
def test_zero_intervals_are_refused_clearly(name):
    with pytest.raises(InputError, match=name):
        FinetuneOptions(**{name: 0})


@pytest.mark.parametrize(
    "overrides",
    [{"learning_rate": float("nan")}, {"warmup_steps": -1}, {"precision": "fp64"}, {"crop_size": 0},
     {"min_learning_rate_ratio": 2.0}, {"grad_clip": -1.0}],
    ids=lambda o: next(iter(o)),
)
def test_other_bad_options_are_refused(overrides):
    with pytest.raises(InputError, match=next(iter(overrides))):
        FinetuneOptions(**overrides)


def test_cli_zero_checkpoint_interval_is_one_line_error(tmp_path, capsys):
    assert _cli(tmp_path, tmp_path / "m.pt", "--checkpoint-every", "0") == 1
    err = capsys.readouterr().err
    assert "checkpoint_every" in err and "Traceback" not in err and "ZeroDivision" not in err
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------- item 7: resume


def _interrupted_run(tmp_path, data, config_name="tiny_vit_test", **overrides):
    """A run stopped after its first checkpoint, as if killed there; returns the output path."""
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    path = tmp_path / "run.pt"
    run = finetune(build_sam(config_name), data, None, _options(**overrides), checkpoint_path=path)
    for report in run:
        if report.checkpoint:
            break
    run.close()
    return path


def test_resume_with_another_architecture_is_a_clear_error(tmp_path, data):
    from napari_sam.model import build_sam

    path = _interrupted_run(tmp_path, data)
    other = build_sam("tiny_tinyvit_test")
    with pytest.raises(InputError, match="tiny_vit_test.*tiny_tinyvit_test|tiny_tinyvit_test.*tiny_vit_test"):
        run_finetune(other, data, None, _options(), checkpoint_path=path, resume=True)


def test_resume_with_another_set_of_trained_parameters_is_a_clear_error(tmp_path, data):
    from napari_sam.model import build_sam

    path = _interrupted_run(tmp_path, data)
    with pytest.raises(InputError, match="freeze_image_encoder"):
        run_finetune(build_sam("tiny_vit_test"), data, None, _options(freeze_image_encoder=True),
                     checkpoint_path=path, resume=True)


@pytest.mark.parametrize(
    "content",
    [b"\x80\x02garbage" * 50, "truncated", {"step": 1}],
    ids=["random_bytes", "truncated", "foreign_dict"],
)
def test_resume_from_a_corrupt_train_state_is_a_clear_error(tmp_path, data, content):
    from napari_sam.model import build_sam

    path = _interrupted_run(tmp_path, data)
    state = training_state_path(path)
    if content == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif isinstance(content, dict):
        torch.save(content, state)
    else:
        state.write_bytes(content)
    with pytest.raises(InputError, match=f"Cannot resume from {state}"):
        run_finetune(build_sam("tiny_vit_test"), data, None, _options(), checkpoint_path=path, resume=True)


def test_resume_takes_weights_and_optimizer_from_one_file(tmp_path, data, single_thread):
    """A kill between two writes cannot leave weights and train state of different steps.

    The old layout kept the weights in ``model.pt`` and the optimizer/step in the train
    state, written one after the other. Here a stale weights file sits at the output
    (as a kill between the writes would leave it); the resumed run must still end
    exactly where an uninterrupted run ends.
    """
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    straight = build_sam("tiny_vit_test")
    run_finetune(straight, data, None, _options(), checkpoint_path=tmp_path / "straight.pt")

    path = _interrupted_run(tmp_path, data)
    torch.manual_seed(5)
    save_checkpoint(build_sam("tiny_vit_test"), path)  # stale weights of another step at the output
    torch.manual_seed(1)
    resumed = build_sam("tiny_vit_test")
    reports = run_finetune(resumed, data, None, _options(), checkpoint_path=path, resume=True)
    assert reports[0].step == 1 and reports[-1].done
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_resume_after_the_last_step_rewrites_a_missing_output(tmp_path, data):
    from napari_sam.model import build_sam, load_model

    torch.manual_seed(0)
    model = build_sam("tiny_vit_test")
    path = tmp_path / "done.pt"
    run_finetune(model, data, None, _options(steps=1), checkpoint_path=path)
    path.unlink()  # as if killed after the final train state, before the final weights
    reports = run_finetune(build_sam("tiny_vit_test"), data, None, _options(steps=1), checkpoint_path=path,
                           resume=True)
    assert reports[-1].done and reports[-1].checkpoint == str(path)
    loaded = load_model(path, device="cpu").state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ----------------------------------------------------------------------------- item 8: file modes


def test_train_state_honours_the_umask(tmp_path, data, tiny_model):
    old = os_umask(0o027)
    try:
        path = tmp_path / "m.pt"
        run_finetune(tiny_model, data, None, _options(steps=1), checkpoint_path=path)
    finally:
        os_umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    assert training_state_path(path).stat().st_mode & 0o777 == 0o640


def os_umask(mask: int) -> int:
    import os

    return os.umask(mask)


# ----------------------------------------------------------------------------- item 7: label data


def test_a_label_folder_with_two_candidates_for_one_image_names_both(tmp_path):
    import tifffile

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    sample = synthetic_image((32, 32), seed=0)
    tifffile.imwrite(tmp_path / "img" / "a0.tif", sample.image)
    tifffile.imwrite(tmp_path / "lab" / "a0.tif", sample.labels)
    tifffile.imwrite(tmp_path / "lab" / "a0_labels.tif", sample.labels)
    with pytest.raises(InputError, match=r"a0\.tif.*a0_labels\.tif"):
        load_folder_pairs(tmp_path / "img", tmp_path / "lab")


@pytest.mark.parametrize("foreground", [1, 255])
def test_binary_labels_warn_and_become_connected_components(foreground):
    labels = np.zeros((40, 40), np.uint8)
    labels[2:10, 2:10] = foreground
    labels[20:30, 5:12] = foreground
    labels[15:25, 25:35] = foreground
    with pytest.warns(UserWarning, match="binary mask.*3 separate"):
        pair = validate_pair(np.zeros((40, 40), np.float32), labels, name="cells")
    assert sorted(np.unique(pair.labels)) == [0, 1, 2, 3]
    assert (pair.labels > 0).sum() == (labels > 0).sum()


def test_one_object_or_true_instances_do_not_warn():
    labels = np.zeros((40, 40), np.uint16)
    labels[2:10, 2:10] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(validate_pair(np.zeros((40, 40)), labels).labels, labels)
        labels[20:30, 5:12] = 7
        np.testing.assert_array_equal(validate_pair(np.zeros((40, 40)), labels).labels, labels)


def test_huge_label_ids_are_relabelled_in_order():
    labels = np.zeros((40, 40), np.int64)
    labels[2:10, 2:10] = 3_000_000_000
    labels[20:30, 5:12] = 10**9
    labels[30:35, 30:35] = 7
    pair = validate_pair(np.zeros((40, 40), np.float32), labels)
    assert pair.labels.max() == 3
    for old in (7, 10**9, 3_000_000_000):  # same partition, ids in the old order
        assert len(np.unique(pair.labels[labels == old])) == 1
    assert pair.labels[32, 32] < pair.labels[25, 8] < pair.labels[5, 5]


def test_training_and_evaluation_with_huge_ids_need_little_memory(tiny_model):
    import tracemalloc

    from napari_sam.engine.training.prompt_sampling import object_ids

    sample = synthetic_image((64, 64), seed=3)
    labels = np.where(sample.labels > 0, sample.labels.astype(np.int64) + 2**27, 0)
    tracemalloc.start()
    try:
        ids = object_ids(labels)
        result = evaluate_with_predictor(tiny_model, [(sample.image, labels)], device="cpu", precision="fp32")
        run_finetune(tiny_model, [(sample.image, labels)], options=_options(steps=1, checkpoint_every=100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ids) == len(np.unique(sample.labels)) - 1
    assert result["objects"] == len(ids)
    assert peak < 200e6, f"{peak / 1e6:.0f} MB traced"
