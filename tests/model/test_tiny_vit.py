"""MobileSAM's TinyViT image encoder: shapes, checkpoint layout, attention details."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from napari_sam.model.config import TINY_TINYVIT, VIT_B, VIT_T
from napari_sam.model.sam.tiny_vit import (
    TinyViT,
    TinyViTBlock,
    WindowAttention,
    window_offset_index,
)

# {key: shape} of the image encoder in MobileSAM's released mobile_sam.pt (prefix
# "image_encoder." removed), generated from the mobile_sam package's TinyViT built as
# build_sam_vit_t builds it.
OFFICIAL_KEYS = Path(__file__).parents[1] / "data" / "official_keys_vit_t.json"


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, BN running stats included, so no part is a no-op."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                fan_in = tensor[0].numel() if tensor.ndim > 1 else 4
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
    return model


@pytest.fixture(scope="module")
def tiny_encoder() -> TinyViT:
    torch.manual_seed(0)
    return _randomise(TinyViT(TINY_TINYVIT)).eval()


def test_tiny_config_output_shape(tiny_encoder):
    size = TINY_TINYVIT.img_size
    with torch.no_grad():
        embedding = tiny_encoder(torch.randn(2, 3, size, size))
    side = TINY_TINYVIT.embedding_size
    assert embedding.shape == (2, TINY_TINYVIT.prompt_embed_dim, side, side)
    assert torch.isfinite(embedding).all()


def test_vit_t_builds_and_runs_on_meta():
    with torch.device("meta"):
        encoder = TinyViT(VIT_T)
        image = torch.empty(1, 3, VIT_T.img_size, VIT_T.img_size)
    embedding = encoder(image)
    side = VIT_T.embedding_size
    assert embedding.shape == (1, VIT_T.prompt_embed_dim, side, side)


def test_state_dict_matches_released_mobile_sam_layout():
    official = json.loads(OFFICIAL_KEYS.read_text())
    with torch.device("meta"):
        encoder = TinyViT(VIT_T)
    ours = {key: list(value.shape) for key, value in encoder.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {key: shape for key, shape in ours.items() if official[key] != shape} == {}


def test_batch_items_are_independent_in_eval_mode(tiny_encoder):
    images = torch.randn(2, 3, TINY_TINYVIT.img_size, TINY_TINYVIT.img_size)
    with torch.no_grad():
        together = tiny_encoder(images)
        alone = torch.cat([tiny_encoder(images[:1]), tiny_encoder(images[1:])])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window_size", [1, 2, 3, 7])
def test_bias_index_numbers_offsets_in_order_of_first_appearance(window_size):
    # The checkpoint's bias table columns are numbered by first appearance of each
    # absolute (row, col) offset while scanning all token pairs row-major.
    points = list(itertools.product(range(window_size), repeat=2))
    column_of_offset: dict[tuple[int, int], int] = {}
    expected = []
    for first in points:
        for second in points:
            offset = (abs(first[0] - second[0]), abs(first[1] - second[1]))
            column_of_offset.setdefault(offset, len(column_of_offset))
            expected.append(column_of_offset[offset])
    expected = torch.tensor(expected).view(len(points), len(points))
    assert torch.equal(window_offset_index(window_size), expected)
    assert len(column_of_offset) == window_size**2  # == attention_biases.shape[1]


def test_window_attention_matches_explicit_softmax():
    torch.manual_seed(1)
    dim, heads, window = 12, 3, 3
    attention = _randomise(WindowAttention(dim, heads, window), seed=2)
    tokens = torch.randn(4, window * window, dim)
    with torch.no_grad():
        got = attention(tokens)
        qkv = attention.qkv(attention.norm(tokens)).view(4, window * window, heads, 3, dim // heads)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # per head: q, k, v side by side
        bias = attention.attention_biases[:, window_offset_index(window)]  # index checked above
        weights = (q @ k.transpose(-1, -2) / (dim // heads) ** 0.5 + bias).softmax(-1)
        expected = attention.proj((weights @ v).transpose(1, 2).reshape(4, window * window, dim))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_block_pads_to_whole_windows_and_padding_takes_part_in_attention():
    torch.manual_seed(3)
    dim, window, height, width = 8, 4, 6, 9
    block = _randomise(TinyViTBlock(dim, 2, window, mlp_ratio=2.0, local_conv_size=3), seed=4).eval()
    x = torch.randn(2, height, width, dim)
    with torch.no_grad():
        got = block._windowed_attention(x)
        padded = F.pad(x, (0, 0, 0, -width % window, 0, -height % window))
        expected = torch.empty_like(padded)
        for top in range(0, padded.shape[1], window):
            for left in range(0, padded.shape[2], window):
                tile = padded[:, top : top + window, left : left + window].reshape(2, window * window, dim)
                expected[:, top : top + window, left : left + window] = block.attn(tile).view(2, window, window, dim)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected[:, :height, :width], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("materialise", ["assign", "to_empty"])
def test_meta_built_encoder_loads_a_state_dict(tiny_encoder, materialise):
    # The bias index is not in the state dict; it must still be right after loading.
    with torch.device("meta"):
        encoder = TinyViT(TINY_TINYVIT)
    if materialise == "assign":
        encoder.load_state_dict(tiny_encoder.state_dict(), assign=True)
    else:
        encoder.to_empty(device="cpu").load_state_dict(tiny_encoder.state_dict())
    encoder.eval()
    image = torch.randn(1, 3, TINY_TINYVIT.img_size, TINY_TINYVIT.img_size)
    with torch.no_grad():
        torch.testing.assert_close(encoder(image), tiny_encoder(image))


def test_train_mode_runs_and_trains_attention_biases():
    torch.manual_seed(5)
    encoder = TinyViT(TINY_TINYVIT).train()
    image = torch.randn(2, 3, TINY_TINYVIT.img_size, TINY_TINYVIT.img_size)
    encoder(image).square().mean().backward()
    bias_grad = encoder.layers[1].blocks[0].attn.attention_biases.grad
    assert bias_grad is not None and bias_grad.abs().sum() > 0
    assert encoder.patch_embed.seq[0].bn.num_batches_tracked.item() == 1


def test_rejects_plain_vit_config():
    with pytest.raises(TypeError):
        TinyViT(VIT_B)
