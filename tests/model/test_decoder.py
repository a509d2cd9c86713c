"""The instance segmentation decoder: shapes, attachment to Sam, saving/loading, micro-sam's file formats, training."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import pytest
import torch

from napari_sam.model import InstanceDecoder, InstanceDecoderConfig, build_sam
from napari_sam.model.checkpoint import (
    detect_config,
    load_model,
    read_state_dict,
    save_checkpoint,
)
from napari_sam.model.config import TINY_VIT
from napari_sam.model.decoders import (
    decoder_config_from_state_dict,
    split_decoder_state,
)
from napari_sam.model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    UnsafeCheckpointError,
)

# TINY_VIT's embedding: 32 channels on a 16x16 grid (256 input, patch 16)
DECODER = InstanceDecoderConfig(embed_dim=32, initial_features=8)
TINY_WITH_DECODER = replace(TINY_VIT, instance_decoder=DECODER)


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (BatchNorm statistics too), so a tensor in the wrong slot changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = 0.05 * torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            else:
                tensor.add_(noise)
    return module.eval()


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return _perturbed(build_sam(TINY_WITH_DECODER), seed)


def _embedding(seed: int = 3, batch: int = 1, side: int = 16) -> torch.Tensor:
    return torch.randn(batch, 32, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("transposed", [True, False])
def test_forward_is_16x_the_embedding_in_unit_range_and_maps_crop_and_resize(transposed):
    config = replace(DECODER, use_conv_transpose=transposed)
    decoder = _perturbed(InstanceDecoder(config, img_size=256))
    embedding = _embedding(batch=2)
    with torch.no_grad():
        out = decoder(embedding)
        maps = decoder.maps(embedding, input_size=(256, 192), original_size=(400, 300))
    assert out.shape == (2, 3, 256, 256)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and float(out.std()) > 1e-3
    assert maps.shape == (2, 3, 400, 300)
    # maps = forward, cropped to the un-padded input (256 x 192 of the square), resized to the original size
    expected = torch.nn.functional.interpolate(out[..., :256, :192], (400, 300), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, expected)
    # the embedding's batch items are decoded independently in eval mode
    torch.testing.assert_close(decoder(embedding[1:]), out[1:])


def test_upsampling_kind_is_read_from_the_parameter_names():
    for transposed in (True, False):
        config = InstanceDecoderConfig(embed_dim=32, initial_features=8, use_conv_transpose=transposed)
        state = InstanceDecoder(config, 256).state_dict()
        assert ("decoder.samplers.0.block.weight" in state) is transposed
        assert ("decoder.samplers.0.conv.weight" in state) is not transposed
        assert decoder_config_from_state_dict(state) == config


def test_build_sam_attaches_the_decoder_only_when_configured():
    assert build_sam(TINY_VIT).instance_decoder is None
    assert not any(key.startswith("instance_decoder.") for key in build_sam(TINY_VIT).state_dict())
    model = build_sam(TINY_WITH_DECODER)
    assert isinstance(model.instance_decoder, InstanceDecoder)
    assert model.instance_decoder.img_size == TINY_VIT.img_size and not model.instance_decoder.training
    keys = list(model.state_dict())
    decoder_keys = [key for key in keys if key.startswith("instance_decoder.")]
    assert decoder_keys and len(decoder_keys) == len(model.instance_decoder.state_dict())
    sam_state, decoder_state = split_decoder_state(model.state_dict())
    assert set(decoder_state) == set(model.instance_decoder.state_dict())
    assert set(sam_state) == set(build_sam(TINY_VIT).state_dict())


def _maps_of(model) -> torch.Tensor:
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.instance_decoder.maps(model.image_encoder(image), (256, 256), (256, 256))


def test_save_checkpoint_and_load_model_round_trip_the_decoder(tmp_path):
    model = _model()
    path = save_checkpoint(model, tmp_path / "with_decoder.pt")
    state = torch.load(path, weights_only=True)
    assert any(key.startswith("instance_decoder.base.") for key in state)

    loaded = load_model(path, device="cpu")
    assert loaded.instance_decoder is not None and not loaded.training
    assert loaded.config.instance_decoder == DECODER
    assert loaded.config.name == TINY_VIT.name  # the SAM part is recognised; the decoder comes from the file
    torch.testing.assert_close(_maps_of(loaded), _maps_of(model))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)

    # a file without decoder tensors still gives a model without a decoder
    plain = save_checkpoint(build_sam(TINY_VIT), tmp_path / "plain.pt")
    assert load_model(plain, device="cpu").instance_decoder is None


def test_micro_sam_decoder_file_and_combined_checkpoint_load_safely(tmp_path):
    model = _model()
    sam_state, decoder_state = split_decoder_state(model.state_dict())
    # micro-sam's published vit_*_decoder.pt: an OrderedDict of the decoder's tensors, no prefix
    torch.save(OrderedDict(decoder_state), tmp_path / "vit_x_decoder.pt")
    torch.save(sam_state, tmp_path / "vit_x.pt")
    loaded = load_model(tmp_path / "vit_x.pt", device="cpu", decoder=tmp_path / "vit_x_decoder.pt")
    assert loaded.config.instance_decoder == DECODER
    torch.testing.assert_close(_maps_of(loaded), _maps_of(model))
    # without decoder= the SAM file alone loads without one
    assert load_model(tmp_path / "vit_x.pt", device="cpu").instance_decoder is None

    # micro-sam's combined training export: {"model_state": {"sam.<key>": ...}, "decoder_state": ...}
    combined = {
        "model_state": OrderedDict(("sam." + key, value) for key, value in sam_state.items()),
        "decoder_state": OrderedDict(decoder_state),
    }
    torch.save(combined, tmp_path / "combined.pt")
    assert any(key.startswith("instance_decoder.") for key in read_state_dict(tmp_path / "combined.pt"))
    loaded = load_model(tmp_path / "combined.pt", device="cpu")
    torch.testing.assert_close(_maps_of(loaded), _maps_of(model))
    # the combined file, and one of our own checkpoints, also serve as decoder= for a SAM-only file
    for decoder_file in (tmp_path / "combined.pt", save_checkpoint(model, tmp_path / "ours.pt")):
        loaded = load_model(tmp_path / "vit_x.pt", device="cpu", decoder=decoder_file)
        torch.testing.assert_close(_maps_of(loaded), _maps_of(model))
    # decoder= replaces the decoder a file holds
    other = _perturbed(InstanceDecoder(DECODER, 256), seed=9)
    torch.save(other.state_dict(), tmp_path / "other_decoder.pt")
    loaded = load_model(tmp_path / "ours.pt", device="cpu", decoder=tmp_path / "other_decoder.pt")
    embedding = _embedding()
    with torch.no_grad():
        torch.testing.assert_close(loaded.instance_decoder(embedding), other(embedding))


def test_decoder_file_with_pickled_objects_is_refused_and_a_non_decoder_is_named(tmp_path):
    model = _model()
    sam_state, decoder_state = split_decoder_state(model.state_dict())
    torch.save(sam_state, tmp_path / "sam.pt")

    class Payload:  # an arbitrary object: weights_only loading must refuse it before anything runs
        def __reduce__(self):
            return (print, ("pwned",))

    # micro-sam's own loader uses weights_only=False; a training checkpoint with pickled objects must be refused here
    torch.save({"decoder_state": decoder_state, "config": Payload()}, tmp_path / "evil_decoder.pt")
    with pytest.raises(UnsafeCheckpointError, match="'print'"):
        load_model(tmp_path / "sam.pt", device="cpu", decoder=tmp_path / "evil_decoder.pt")

    with pytest.raises(CheckpointError, match="is not an instance decoder"):
        load_model(tmp_path / "sam.pt", device="cpu", decoder=tmp_path / "sam.pt")


def test_decoder_tensors_without_the_layout_are_an_architecture_mismatch(tmp_path):
    state = dict(_model().state_dict())
    del state["instance_decoder.out_conv.weight"]
    with pytest.raises(ArchitectureMismatchError, match="out_conv.weight"):
        detect_config(state, source="broken.pt")
    state = dict(_model().state_dict())
    state["instance_decoder.base.block.1.bias"] = torch.zeros(5)  # wrong shape
    with pytest.raises(ArchitectureMismatchError, match="base.block.1.bias"):
        detect_config(state, source="broken.pt")


def test_decoder_trains_jointly_with_the_encoder():
    torch.manual_seed(0)
    model = build_sam(TINY_WITH_DECODER).train()
    target = (torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    params = list(model.image_encoder.parameters()) + list(model.instance_decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        maps = model.instance_decoder.maps(model.image_encoder(images), (256, 256), (256, 256))
        loss = torch.nn.functional.binary_cross_entropy(maps, target)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert model.instance_decoder.deconv1.block[2].num_batches_tracked.item() == 4  # BatchNorm in train mode
    assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # gradients reach the encoder
    assert losses[-1] < losses[0]


def test_a_registered_config_with_a_decoder_is_recognised_by_name(tmp_path):
    from napari_sam.model.config import CONFIGS

    with_decoder = [config for config in CONFIGS.values() if config.instance_decoder is not None]
    assert with_decoder  # the v2 test fixture's architecture
    config = min(with_decoder, key=lambda c: c.img_size)
    path = save_checkpoint(build_sam(config), tmp_path / "registered.pt")
    loaded = load_model(path, device="cpu")
    assert loaded.config == config and loaded.instance_decoder is not None
