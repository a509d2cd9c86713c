"""Our SAM networks: shapes, the official state-dict layout, and behaviour checked against explicit formulas.

Tiny configurations throughout, except the layout tests, which build the full
models on the meta device (no memory, no time). ``tests/data/official_keys_vit_{b,h}.json``
list ``{state-dict key: shape}`` of Meta's ``segment_anything`` models, recorded
from the official package (``Sam.state_dict()`` of ``build_sam_vit_b`` / ``_vit_h``
built on the meta device).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from napari_sam.model.config import CONFIGS, TINY_TINYVIT, TINY_VIT, VIT_B, VIT_H

DATA_DIR = Path(__file__).parents[1] / "data"
C = TINY_VIT.prompt_embed_dim
E = TINY_VIT.embedding_size
S = TINY_VIT.img_size
LOW = TINY_VIT.low_res_mask_size


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer non-trivial values (zero-initialised ones included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith(("pixel_mean", "pixel_std")):
                continue
            fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
            scale = 1.0 if tensor.dim() <= 1 or "rel_pos" in name or "pos_embed" in name else 1 / math.sqrt(fan_in)
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return module


@pytest.fixture(scope="module")
def model():
    from napari_sam.model.sam.model import build_sam

    return _randomise(build_sam(TINY_VIT))


# --- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("config, filename", [(VIT_B, "official_keys_vit_b.json"), (VIT_H, "official_keys_vit_h.json")])
def test_state_dict_matches_official_layout(config, filename):
    from napari_sam.model.sam.model import build_sam

    official = json.loads((DATA_DIR / filename).read_text())
    with torch.device("meta"):
        sam = build_sam(config)
    ours = {key: list(value.shape) for key, value in sam.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if v != official[k]} == {}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_builds_on_meta_device(name):
    from napari_sam.model.sam.model import Sam, build_sam

    with torch.device("meta"):
        sam = build_sam(name)
    assert isinstance(sam, Sam)
    assert sam.config is CONFIGS[name]
    assert sam.pixel_mean.is_meta
    assert not sam.training


def test_build_sam_picks_encoder_by_kind():
    from napari_sam.model.sam.image_encoder import ImageEncoderViT
    from napari_sam.model.sam.model import build_sam
    from napari_sam.model.sam.tiny_vit import TinyViT

    with torch.device("meta"):
        assert isinstance(build_sam(TINY_VIT).image_encoder, ImageEncoderViT)
        assert isinstance(build_sam(TINY_TINYVIT).image_encoder, TinyViT)
    with pytest.raises(KeyError, match="unknown SAM config"):
        build_sam("no_such_model")


def test_pixel_normalisation_buffers_come_from_config_and_stay_out_of_state_dict(model):
    assert model.pixel_mean.shape == (3, 1, 1)
    assert model.pixel_mean.flatten().tolist() == pytest.approx(TINY_VIT.pixel_mean)
    assert model.pixel_std.flatten().tolist() == pytest.approx(TINY_VIT.pixel_std)
    # the released checkpoints do not contain them
    assert not {"pixel_mean", "pixel_std"} & set(model.state_dict())


# --- image encoder ----------------------------------------------------------------------


def test_image_encoder_output_shape(model):
    with torch.no_grad():
        out = model.image_encoder(torch.randn(2, 3, S, S))
    assert out.shape == (2, C, E, E)
    assert torch.isfinite(out).all()


def test_image_encoder_rejects_wrong_input_size(model):
    with pytest.raises(ValueError, match="expects"):
        model.image_encoder(torch.randn(1, 3, S // 2, S // 2))


def test_relative_position_table_indexes_by_offset():
    from napari_sam.model.sam.image_encoder import relative_position_table

    size = 5
    rel_pos = torch.randn(2 * size - 1, 3)
    table = relative_position_table(size, size, rel_pos)
    assert table.shape == (size, size, 3)
    for i in range(size):
        for j in range(size):
            torch.testing.assert_close(table[i, j], rel_pos[i - j + size - 1])


def test_relative_position_table_resamples_other_lengths():
    from napari_sam.model.sam.image_encoder import relative_position_table

    # A linear ramp stays a ramp under linear resampling, so the table is still monotonic in the offset.
    rel_pos = torch.linspace(-1, 1, 7)[:, None].repeat(1, 2)  # trained for a size-4 axis
    table = relative_position_table(6, 6, rel_pos)  # used on a size-6 axis: 11 offsets
    assert table.shape == (6, 6, 2)
    offsets = table[:, 0, 0]  # offsets 0..5
    assert torch.all(offsets[1:] > offsets[:-1])
    torch.testing.assert_close(table[0, 0], table[3, 3])  # same offset, same entry


@pytest.mark.parametrize("height, width, window", [(9, 9, 4), (8, 12, 4), (5, 7, 5)])
def test_window_partition_round_trip(height, width, window):
    from napari_sam.model.sam.image_encoder import merge_windows, partition_windows

    x = torch.randn(2, height, width, 3)
    windows, padded = partition_windows(x, window)
    assert windows.shape[1:] == (window, window, 3)
    assert padded == (math.ceil(height / window) * window, math.ceil(width / window) * window)
    assert windows.shape[0] == 2 * (padded[0] // window) * (padded[1] // window)
    # first window is the top-left corner of the first image
    torch.testing.assert_close(windows[0, : min(window, height), : min(window, width)], x[0, :window, :window])
    torch.testing.assert_close(merge_windows(windows, window, padded, (height, width)), x)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_attention_equals_explicit_softmax_with_decomposed_bias(grid):
    """SDPA + additive mask == softmax(q k^T / sqrt(d) + q.Rh[dy] + q.Rw[dx]) v, written out by hand."""
    from napari_sam.model.sam.image_encoder import Attention

    torch.manual_seed(1)
    dim, heads = 12, 3
    head_dim = dim // heads
    attention = _randomise(Attention(dim, heads, grid), seed=2)
    height, width = grid
    x = torch.randn(2, height, width, dim)

    qkv = attention.qkv(x).reshape(2, height * width, 3, heads, head_dim)
    q, k, v = (qkv[:, :, index].transpose(1, 2) for index in range(3))  # (B, heads, N, hd)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    rh = attention.rel_pos_h[ys[:, None] - ys[None, :] + height - 1]  # (N, N, hd)
    rw = attention.rel_pos_w[xs[:, None] - xs[None, :] + width - 1]
    bias = torch.einsum("bhnc,nmc->bhnm", q, rh) + torch.einsum("bhnc,nmc->bhnm", q, rw)
    expected = (scores + bias).softmax(-1) @ v
    expected = attention.proj(expected.transpose(1, 2).reshape(2, height, width, dim))

    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_image_encoder_runs_with_window_padding_and_bf16_autocast(model):
    """Embedding grid not a multiple of the window (padding path); bf16 autocast builds the mask in bf16."""
    from napari_sam.model.sam.model import build_sam

    config = dataclasses.replace(TINY_VIT, img_size=TINY_VIT.img_size + TINY_VIT.encoder.patch_size)
    assert config.embedding_size % config.encoder.window_size != 0
    encoder = _randomise(build_sam(config).image_encoder, seed=3)
    x = torch.randn(1, 3, config.img_size, config.img_size)
    with torch.no_grad():
        reference = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = encoder(x)
    assert reference.shape == (1, C, config.embedding_size, config.embedding_size)
    # neck ends in a LayerNorm2d: values of order 1, bf16 keeps ~2-3 significant digits
    assert (low_precision.float() - reference).abs().mean() < 0.05


def test_layer_norm_2d_normalises_channels():
    from napari_sam.model.layers import LayerNorm2d

    norm = _randomise(LayerNorm2d(6), seed=4)
    x = torch.randn(2, 6, 3, 5) * 3 + 1
    mean = x.mean(1, keepdim=True)
    var = x.var(1, keepdim=True, unbiased=False)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


# --- prompt encoder ---------------------------------------------------------------------


def _points(batch: int = 2, count: int = 3):
    coords = torch.rand(batch, count, 2) * S
    labels = torch.randint(0, 2, (batch, count))
    return coords, labels


def _boxes(batch: int = 2):
    corner = torch.rand(batch, 2) * S / 2
    return torch.cat([corner, corner + S / 4], dim=1)


@pytest.mark.parametrize(
    "use_points, use_box, use_mask, tokens",
    [(True, False, False, 4), (True, True, False, 5), (False, True, False, 2), (False, False, True, 0), (True, True, True, 5)],
)
def test_prompt_encoder_shapes(model, use_points, use_box, use_mask, tokens):
    points = _points() if use_points else None
    boxes = _boxes() if use_box else None
    masks = torch.randn(2, 1, LOW, LOW) if use_mask else None
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points, boxes, masks)
    assert sparse.shape == (2, tokens, C)
    assert dense.shape == (2, C, E, E)


def test_prompt_encoder_without_prompts_gives_batch_one(model):
    sparse, dense = model.prompt_encoder(None, None, None)
    assert sparse.shape == (1, 0, C)
    torch.testing.assert_close(dense[0, :, 2, 3], model.prompt_encoder.no_mask_embed.weight[0])


def test_points_without_box_get_a_padding_point(model):
    encoder = model.prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]])
    labels = torch.tensor([[1, 0, -1]])
    with torch.no_grad():
        sparse, _ = encoder((coords, labels), None, None)
        positional = encoder.pe_layer.forward_with_coords(coords + 0.5, (S, S))
    assert sparse.shape == (1, 4, C)
    torch.testing.assert_close(sparse[0, 0], positional[0, 0] + encoder.point_embeddings[1].weight[0])
    torch.testing.assert_close(sparse[0, 1], positional[0, 1] + encoder.point_embeddings[0].weight[0])
    # a padding point, given or appended, carries only the not-a-point embedding
    torch.testing.assert_close(sparse[0, 2], encoder.not_a_point_embed.weight[0])
    torch.testing.assert_close(sparse[0, 3], encoder.not_a_point_embed.weight[0])

    with torch.no_grad():
        with_box, _ = encoder((coords, labels), _boxes(1), None)
    assert with_box.shape == (1, 5, C)  # 3 points + 2 corners, no padding
    torch.testing.assert_close(with_box[0, :3], sparse[0, :3])


def test_box_corners_are_encoded_with_their_corner_embeddings(model):
    encoder = model.prompt_encoder
    boxes = torch.tensor([[12.0, 30.0, 100.0, 80.0]])
    with torch.no_grad():
        sparse, _ = encoder(None, boxes, None)
        corners = encoder.pe_layer.forward_with_coords(torch.tensor([[[12.5, 30.5], [100.5, 80.5]]]), (S, S))
    torch.testing.assert_close(sparse[0, 0], corners[0, 0] + encoder.point_embeddings[2].weight[0])
    torch.testing.assert_close(sparse[0, 1], corners[0, 1] + encoder.point_embeddings[3].weight[0])


def test_dense_pe_matches_point_encoding_at_cell_centres(model):
    """Cell (row i, col j) of the dense encoding is the encoding of input pixel x=(j+.5)*stride, y=(i+.5)*stride."""
    encoder = model.prompt_encoder
    dense_pe = encoder.get_dense_pe()
    assert dense_pe.shape == (1, C, E, E)
    stride = S / E
    rows, cols = torch.tensor([0, 3, E - 1]), torch.tensor([5, 0, 2])
    xy = torch.stack([(cols + 0.5) * stride, (rows + 0.5) * stride], dim=-1)[None]
    expected = encoder.pe_layer.forward_with_coords(xy, (S, S))[0]  # (3, C)
    torch.testing.assert_close(dense_pe[0, :, rows, cols].T, expected, atol=1e-4, rtol=1e-4)


def test_mask_input_changes_only_dense_embedding(model):
    points = _points(1, 1)
    with torch.no_grad():
        sparse_a, dense_a = model.prompt_encoder(points, None, None)
        sparse_b, dense_b = model.prompt_encoder(points, None, torch.randn(1, 1, LOW, LOW))
    torch.testing.assert_close(sparse_a, sparse_b)
    assert not torch.allclose(dense_a, dense_b)


# --- mask decoder -------------------------------------------------------------------------


def _decode(model, points=None, boxes=None, masks=None, multimask=True, embedding=None):
    if embedding is None:
        embedding = torch.randn(1, C, E, E, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points, boxes, masks)
        return model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("use_box", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_decoder_output_shapes(model, multimask, use_box, use_mask):
    outputs = 3 if multimask else 1
    masks = torch.randn(2, 1, LOW, LOW) if use_mask else None
    low_res, iou = _decode(model, _points(), _boxes() if use_box else None, masks, multimask)
    assert low_res.shape == (2, outputs, LOW, LOW)
    assert iou.shape == (2, outputs)
    assert torch.isfinite(low_res).all() and torch.isfinite(iou).all()


def test_multimask_returns_tokens_one_to_three_and_single_returns_token_zero(model):
    points = _points(2, 2)
    embedding = torch.randn(1, C, E, E)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points, None, None)
        all_masks, all_iou = model.mask_decoder.predict_masks(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense)
    assert all_masks.shape == (2, TINY_VIT.num_multimask_outputs + 1, LOW, LOW)
    multi, multi_iou = _decode(model, points, multimask=True, embedding=embedding)
    single, single_iou = _decode(model, points, multimask=False, embedding=embedding)
    torch.testing.assert_close(multi, all_masks[:, 1:])
    torch.testing.assert_close(multi_iou, all_iou[:, 1:])
    torch.testing.assert_close(single, all_masks[:, :1])
    torch.testing.assert_close(single_iou, all_iou[:, :1])
    assert not torch.allclose(single, multi[:, :1])


def test_prompt_sets_in_a_batch_are_independent(model):
    """One shared image embedding, three prompt sets == three separate calls; per-set image embeddings too."""
    coords, labels = _points(3, 2)
    embedding = torch.randn(1, C, E, E)
    batched, batched_iou = _decode(model, (coords, labels), embedding=embedding)
    for index in range(3):
        alone, alone_iou = _decode(model, (coords[index : index + 1], labels[index : index + 1]), embedding=embedding)
        torch.testing.assert_close(batched[index : index + 1], alone, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched_iou[index : index + 1], alone_iou, atol=1e-4, rtol=1e-4)
    per_set, _ = _decode(model, (coords, labels), embedding=embedding.expand(3, -1, -1, -1).clone())
    torch.testing.assert_close(per_set, batched, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="batch"):
        _decode(model, (coords, labels), embedding=torch.randn(2, C, E, E))


def test_decoder_stages_share_the_image_and_give_the_same_masks(model):
    """run_transformer with one shared dense embedding == per-prompt copies; masks_from on a subset == all."""
    coords, labels = _points(4, 1)
    embedding = torch.randn(1, C, E, E)
    decoder = model.mask_decoder
    pe = model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        sparse, dense = model.prompt_encoder((coords, labels), None, None)
        assert dense.shape[0] == 4
        shared_tokens, shared_image = decoder.run_transformer(embedding, pe, sparse, dense[:1])
        tokens, image = decoder.run_transformer(embedding, pe, sparse, dense)
        torch.testing.assert_close(shared_tokens, tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared_image, image, atol=1e-5, rtol=1e-5)
        full_masks, full_iou = decoder.predict_masks(embedding, pe, sparse, dense)
        torch.testing.assert_close(decoder.iou_from(tokens), full_iou)
        subset = torch.tensor([3, 1])
        torch.testing.assert_close(decoder.masks_from(tokens[subset], image[subset], (E, E)), full_masks[subset])
        assert decoder.masks_from(tokens[:0], image[:0], (E, E)).shape == (0, 4, LOW, LOW)


def test_decoder_depends_on_image_and_prompts(model):
    points = _points(1, 1)
    first, _ = _decode(model, points, embedding=torch.randn(1, C, E, E))
    other_image, _ = _decode(model, points, embedding=torch.randn(1, C, E, E))
    assert not torch.allclose(first, other_image)
    embedding = torch.randn(1, C, E, E)
    a, _ = _decode(model, points, embedding=embedding)
    b, _ = _decode(model, _points(1, 1), embedding=embedding)
    assert not torch.allclose(a, b)


def test_model_cast_to_bfloat16_accepts_float32_prompt_coordinates():
    from napari_sam.model.sam.model import build_sam

    torch.manual_seed(0)
    sam = build_sam(TINY_VIT).to(torch.bfloat16)
    with torch.no_grad():
        embedding = sam.image_encoder(torch.randn(1, 3, S, S, dtype=torch.bfloat16))
        sparse, dense = sam.prompt_encoder(_points(2, 2), _boxes(2), None)
        low_res, iou = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert sparse.dtype == dense.dtype == low_res.dtype == iou.dtype == torch.bfloat16
    assert low_res.shape == (2, 3, LOW, LOW)
