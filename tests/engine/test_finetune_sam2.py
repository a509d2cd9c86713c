"""Fine-tuning the decoder of a SAM 2 model (tiny ``tiny_sam2_test``): inputs prepared as the Predictor
prepares them for SAM 2, the decoder given the high-resolution features, a short run lowering the loss,
and the saved checkpoint loading back as SAM 2 with identical outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine.datasets.synthetic import synthetic_dataset, synthetic_image
from napari_sam.engine.training.data import prepare_sample, validate_pair
from napari_sam.engine.training.loop import (
    FinetuneOptions,
    run_finetune,
    training_step_loss,
)
from napari_sam.model.sam2 import build_sam2

_spec = importlib.util.spec_from_file_location("_finetune_sam2_weights", Path(__file__).parents[1] / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


@pytest.fixture
def sam2_model():
    return W.load_deterministic_weights(build_sam2("tiny_sam2_test"), seed=1)


def _fixed_loss(model, samples, options) -> float:
    model.eval()
    with torch.no_grad():
        loss, _ = training_step_loss(model, samples, options, np.random.default_rng(0), torch.Generator().manual_seed(0))
    return float(loss)


def test_a_sam2_sample_is_the_predictors_input_and_labels_fill_the_square(sam2_model):
    from napari_sam.engine import Predictor
    from napari_sam.engine.predict.preprocessing import to_uint8_rgb

    sample = synthetic_image((128, 96), seed=1)
    prepared = prepare_sample(validate_pair(*sample), sam2_model.config, normalize=sam2_model.normalize_input)
    rgb = torch.from_numpy(to_uint8_rgb(sample.image)).permute(2, 0, 1)[None]
    torch.testing.assert_close(prepared.model_input, sam2_model.normalize_input(rgb))
    size = sam2_model.config.img_size
    assert prepared.valid_size == (size, size)  # SAM 2 squashes the whole image into its square: no padding
    labels = prepared.labels.numpy()
    assert labels.shape == (size, size) and set(np.unique(labels)) == set(np.unique(sample.labels))
    # the embedding the step trains on is the one the Predictor computes from the same image
    predictor = Predictor(sam2_model, device="cpu", precision="fp32")
    embedding = predictor.compute_embedding(sample.image)
    with torch.no_grad():
        features, high_res = sam2_model.encode_image(prepared.model_input)
    torch.testing.assert_close(features, embedding.features)
    for ours, theirs in zip(high_res, embedding.high_res_features):
        torch.testing.assert_close(ours, theirs)


def test_finetuning_a_sam2_decoder_lowers_the_loss_and_saves_a_sam2_checkpoint(sam2_model, tmp_path):
    from napari_sam.engine import Predictor
    from napari_sam.engine.predict.fingerprint import encoder_fingerprint
    from napari_sam.model import load_model
    from napari_sam.model.sam2 import Sam2

    data = synthetic_dataset(6, shape=(128, 128), seed=50)
    options = FinetuneOptions(
        steps=8, images_per_step=2, objects_per_image=4, correction_iterations=1, learning_rate=2e-3,
        warmup_steps=1, validate_every=8, checkpoint_every=100, min_object_size=1, seed=0, device="cpu",
        freeze_image_encoder=True,
    )
    fixed = [prepare_sample(validate_pair(*pair), sam2_model.config, normalize=sam2_model.normalize_input)
             for pair in data[:2]]
    before = _fixed_loss(sam2_model, fixed, options)
    fingerprint = encoder_fingerprint(sam2_model)
    decoder_before = {k: v.clone() for k, v in sam2_model.sam_mask_decoder.state_dict().items()}
    path = tmp_path / "sam2_finetuned.pt"
    reports = run_finetune(sam2_model, data, data[:1], options, checkpoint_path=path)
    after = _fixed_loss(sam2_model, fixed, options)
    assert all(np.isfinite(r.loss) for r in reports[1:])
    assert after < before, (before, after)
    # decoder-only: the embedding (encoder, no_mem_embed, conv_s0/conv_s1) is unchanged, so cached ones stay valid
    assert encoder_fingerprint(sam2_model) == fingerprint
    assert any(not torch.equal(v, decoder_before[k]) for k, v in sam2_model.sam_mask_decoder.state_dict().items())

    assert reports[-1].done and reports[-1].checkpoint == str(path)
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, Sam2) and loaded.config.name == "tiny_sam2_test"
    image = data[0].image
    outputs = []
    for model in (sam2_model, loaded):
        predictor = Predictor(model, device="cpu", precision="fp32")
        predictor.set_image(image)
        outputs.append(predictor.predict(points=[[40, 50]], labels=[1], box=[20, 30, 70, 80]))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][2], outputs[1][2])


def test_cli_finetunes_an_official_layout_sam2_checkpoint(sam2_model, tmp_path, capsys):
    import tifffile

    from napari_sam.cli import main
    from napari_sam.model import load_model
    from napari_sam.model.sam2 import Sam2

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for index, sample in enumerate(synthetic_dataset(2, shape=(80, 80), seed=60)):
        tifffile.imwrite(images / f"img{index}.tif", sample.image)
        tifffile.imwrite(labels / f"img{index}.tif", sample.labels)
    start = tmp_path / "sam2_start.pt"
    torch.save({"model": sam2_model.state_dict()}, start)  # as Meta releases sam2.1_hiera_*.pt
    output = tmp_path / "out" / "tuned.pt"
    status = main([
        "finetune", "--images", str(images), "--labels", str(labels), "--output", str(output), "--model", str(start),
        "--steps", "2", "--images-per-step", "1", "--objects-per-image", "2", "--correction-iterations", "1",
        "--device", "cpu",
    ])
    assert status == 0, capsys.readouterr()
    assert "step 2/2" in capsys.readouterr().out
    tuned = load_model(output, device="cpu")
    assert isinstance(tuned, Sam2) and tuned.config.name == "tiny_sam2_test"
    assert start.exists() and load_model(start, device="cpu").state_dict().keys() == tuned.state_dict().keys()
