"""Our instance decoder against micro-sam's (golden files from tools/make_golden_decoder.py; micro-sam not imported).

Both sides fill the same state-dict keys with ``tests/_weights.py``'s deterministic weights and decode the same
seeded embedding, so equal outputs mean equal layout, equal arithmetic and equal post-processing of the maps.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.model import InstanceDecoder, InstanceDecoderConfig
from napari_sam.model.decoders import decoder_config_from_state_dict

GOLDEN_DIR = Path(__file__).parents[1] / "data" / "golden"

_spec = importlib.util.spec_from_file_location("_reference_weights", Path(__file__).parents[1] / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

META = json.loads((GOLDEN_DIR / "decoder_maps.json").read_text())


@pytest.mark.parametrize("index", range(len(META["cases"])))
def test_maps_equal_micro_sams_decoder_for_the_same_weights_and_embedding(index):
    case = META["cases"][index]
    config = InstanceDecoderConfig(
        embed_dim=META["embed_dim"],
        initial_features=META["initial_features"],
        use_conv_transpose=case["use_conv_transpose"],
    )
    decoder = InstanceDecoder(config, img_size=case["img_size"])
    assert len(decoder.state_dict()) == case["keys"]
    W.load_deterministic_weights(decoder, META["weight_seed"])
    embedding = W.standard_normal((1, config.embed_dim, case["side"], case["side"]), case["embedding_seed"])
    assert W.array_digest(embedding.numpy()) == case["embedding_digest"]
    with torch.no_grad():
        forward = decoder(embedding)[0].numpy()
        maps = decoder.maps(embedding, tuple(case["input_size"]), tuple(case["original_size"]))[0].numpy()
    with np.load(GOLDEN_DIR / "decoder_maps.npz") as golden:
        expected_forward = golden[f"case{index}_forward"]
        expected_maps = golden[f"case{index}_maps"]
    assert maps.shape == (3, *case["original_size"])
    assert expected_maps.std() > 0.01  # the random decoder's maps vary: equality is not trivial
    np.testing.assert_allclose(forward, expected_forward, rtol=0, atol=2e-5)
    np.testing.assert_allclose(maps, expected_maps, rtol=0, atol=2e-5)


def test_vit_b_sized_decoder_has_micro_sams_published_keys_and_shapes():
    golden = json.loads((GOLDEN_DIR / "decoder_vit_b_keys.json").read_text())
    config = InstanceDecoderConfig(embed_dim=256)  # SAM's neck width; the other fields at their defaults
    with torch.device("meta"):
        decoder = InstanceDecoder(config, img_size=golden["img_size"])
    ours = {key: list(value.shape) for key, value in decoder.state_dict().items()}
    assert ours == dict(golden["keys"])  # same keys, same shapes (the order of keys does not matter to loading)
    # and such a file is recognised as this configuration
    shapes = {key: torch.empty(shape, device="meta") for key, shape in golden["keys"]}
    assert decoder_config_from_state_dict(shapes) == config
