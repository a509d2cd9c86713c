"""Fine-tuning trains a model's instance decoder jointly with SAM's parts, as micro-sam does.

The targets (foreground, normalised distance to the object centre, inverted normalised
distance to the boundary) are compared with torch-em's for the same label images
(tests/data/golden/instance_targets.npz, made by tools/make_instance_target_golden.py in
the separate oracle environment).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine.datasets.synthetic import synthetic_dataset
from napari_sam.engine.errors import InputError
from napari_sam.engine.training.data import prepare_sample, validate_pair
from napari_sam.engine.training.instance_targets import (
    instance_decoder_loss,
    instance_targets,
    samples_decoder_loss,
)
from napari_sam.engine.training.loop import FinetuneOptions, run_finetune

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "instance_targets.npz"


@pytest.fixture
def single_thread():
    """One torch thread: bit-identical reductions, so the runs below are deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def decoder_model():
    """tiny_vit_test with a small instance decoder, seeded random weights."""
    from napari_sam.model import build_sam
    from napari_sam.model.config import CONFIGS, InstanceDecoderConfig

    base = CONFIGS["tiny_vit_test"]
    config = dataclasses.replace(base, instance_decoder=InstanceDecoderConfig(base.prompt_embed_dim, initial_features=4))
    torch.manual_seed(0)
    return build_sam(config).eval()


def _options(**overrides) -> FinetuneOptions:
    settings = {"steps": 3, "images_per_step": 2, "objects_per_image": 3, "correction_iterations": 1,
                "learning_rate": 3e-3, "warmup_steps": 1, "seed": 5, "device": "cpu"}
    settings.update(overrides)
    return FinetuneOptions(**settings)


# ----------------------------------------------------------------------------- targets and loss


@pytest.mark.parametrize("name", ["touching", "crescent", "packed", "blobs"])
def test_targets_equal_torch_ems(name):
    golden = np.load(GOLDEN)
    ours = instance_targets(golden[f"{name}_labels"])
    assert ours.shape == golden[f"{name}_targets"].shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, golden[f"{name}_targets"], rtol=0, atol=1e-6)


def test_targets_of_a_disc_by_hand():
    rows, cols = np.mgrid[:41, :41]
    labels = ((rows - 20) ** 2 + (cols - 20) ** 2 <= 15**2).astype(np.int32) * 5
    foreground, to_centre, to_boundary = instance_targets(labels)
    np.testing.assert_array_equal(foreground, labels > 0)
    assert to_centre[20, 20] == 0 and to_boundary[20, 20] == 0  # centre and deepest pixel
    assert to_centre[labels > 0].max() == pytest.approx(1.0, abs=1e-6)
    assert to_boundary[20, 5] == pytest.approx(1.0, abs=1e-6)  # on the edge
    assert to_centre[20, 12] == pytest.approx(8 / 15, abs=1e-6)  # distances grow linearly from the centre
    assert (to_centre[labels == 0] == 1).all() and (to_boundary[labels == 0] == 1).all()
    empty = instance_targets(np.zeros((8, 9), np.int32))
    np.testing.assert_array_equal(empty, np.stack([np.zeros((8, 9)), np.ones((8, 9)), np.ones((8, 9))]))


def test_loss_is_zero_for_the_targets_and_grows_with_errors():
    labels = synthetic_dataset(1, shape=(64, 64), seed=3)[0].labels
    targets = torch.from_numpy(instance_targets(labels))[None]
    perfect, parts = instance_decoder_loss(targets.clone(), targets)
    assert float(perfect) == pytest.approx(0.0, abs=1e-6) and parts.shape == (3,)
    noisy, _ = instance_decoder_loss((targets + 0.2 * torch.rand_like(targets)).clamp(0, 1), targets)
    flat, _ = instance_decoder_loss(torch.full_like(targets, 0.5), targets)
    assert 0 < float(noisy) < float(flat)
    # the distance channels count inside objects only: errors on the background change nothing there
    changed = targets.clone()
    changed[:, 1:][targets[:, :1].expand(-1, 2, -1, -1) == 0] = 0.0
    _, parts_changed = instance_decoder_loss(changed, targets)
    assert parts_changed[1:].abs().max() < 1e-6


# ----------------------------------------------------------------------------- joint training


def _fixed_batch_loss(model, data) -> float:
    """The decoder's loss on fixed prepared images (no augmentation), without gradients."""
    samples = [prepare_sample(validate_pair(*pair), model.config) for pair in data]
    with torch.no_grad():
        embeddings = model.image_encoder(torch.cat([s.model_input for s in samples]))
        loss, _ = samples_decoder_loss(model.instance_decoder, embeddings, samples, model.config.img_size)
    return float(loss)


def test_joint_training_trains_decoder_and_sam_on_the_same_embeddings(decoder_model, single_thread):
    data = synthetic_dataset(2, shape=(96, 96), seed=21)
    before = {k: v.clone() for k, v in decoder_model.state_dict().items()}
    loss_before = _fixed_batch_loss(decoder_model, data)
    reports = run_finetune(decoder_model, data, options=_options(steps=12, augment=False))
    steps = [r for r in reports if r.loss is not None]
    assert all(r.decoder_loss is not None and r.decoder_loss > 0 for r in steps)
    assert all(r.loss > r.decoder_loss for r in steps)  # SAM's mask loss is part of the same loss
    assert "decoder" in steps[-1].describe()
    after = decoder_model.state_dict()
    for part in ("instance_decoder.", "image_encoder.", "mask_decoder."):
        assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith(part)), part
    # its BatchNorm statistics are learned (a new decoder has none); the model is left in eval mode
    running = [k for k in before if k.startswith("instance_decoder.") and k.endswith("running_mean")]
    assert running and all(not torch.equal(after[k], before[k]) for k in running)
    assert not decoder_model.training and not decoder_model.instance_decoder.training
    assert _fixed_batch_loss(decoder_model, data) < 0.9 * loss_before  # it learns (0.79 -> 0.68 measured)


def test_decoder_loss_weight_zero_leaves_the_decoder_alone(decoder_model):
    data = synthetic_dataset(2, shape=(64, 64), seed=22)
    before = {k: v.clone() for k, v in decoder_model.instance_decoder.state_dict().items()}
    reports = run_finetune(decoder_model, data, options=_options(steps=2, decoder_loss_weight=0.0))
    assert all(r.decoder_loss is None for r in reports)
    for key, value in decoder_model.instance_decoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_model_without_decoder_reports_no_decoder_loss(tiny_model):
    reports = run_finetune(tiny_model, synthetic_dataset(1, shape=(64, 64), seed=23),
                           options=_options(steps=1, images_per_step=1))
    assert reports[-1].decoder_loss is None and "decoder" not in reports[-1].describe()


def test_trained_decoder_is_saved_and_loads_back(decoder_model, tmp_path):
    from napari_sam.model import load_model

    data = synthetic_dataset(2, shape=(64, 64), seed=24)
    path = tmp_path / "joint.pt"
    run_finetune(decoder_model, data, options=_options(steps=2), checkpoint_path=path)
    loaded = load_model(path, device="cpu")
    assert loaded.instance_decoder is not None
    embedding = torch.randn(1, decoder_model.config.prompt_embed_dim, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.instance_decoder(embedding), decoder_model.instance_decoder(embedding))


def test_decoder_loss_weight_is_checked_and_offered_on_the_command_line():
    import argparse

    from napari_sam.engine.training.options import (
        add_finetune_arguments,
        options_from_args,
    )

    with pytest.raises(InputError, match="decoder_loss_weight"):
        FinetuneOptions(decoder_loss_weight=-1.0)
    parser = argparse.ArgumentParser()
    add_finetune_arguments(parser)
    assert options_from_args(parser.parse_args(["--decoder-loss-weight", "0.5"])).decoder_loss_weight == 0.5
    assert FinetuneOptions().decoder_loss_weight == 1.0
