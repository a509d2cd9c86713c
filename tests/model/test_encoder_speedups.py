"""The CPU/GPU speed-ups compute what the plain paths compute.

* attention with the relative-position bias built a band of query rows at a time equals
  the whole-bias attention (and the explicit softmax of the reference formula);
* ``compile_encoder`` gives the eager encoder's output, and falls back to it with one
  warning when compiling fails;
* ``quantize_int8`` quantises the linear layers of a copy and keeps masks close to fp32;
* the per-stage precision rule: on a CPU, automatic segmentation decodes in fp32 even
  when the encoder runs in bf16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _bias_terms(batch, heads, height, width, head_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, height * width, head_dim, generator=g) for _ in range(3))
    bias_h = torch.randn(batch, heads, height, width, height, generator=g)
    bias_w = torch.randn(batch, heads, height, width, width, generator=g)
    return q, k, v, bias_h, bias_w


@pytest.mark.parametrize("shape", [(1, 2, 7, 5, 8), (3, 4, 6, 6, 16)])
@pytest.mark.parametrize("chunk_bytes", [1, 2_000, 1 << 40])
def test_banded_bias_attention_equals_the_explicit_formula(shape, chunk_bytes):
    from napari_sam.model.sam.image_encoder import attention_with_decomposed_bias

    q, k, v, bias_h, bias_w = _bias_terms(*shape)
    batch, heads, height, width, head_dim = shape
    tokens = height * width
    bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(batch, heads, tokens, tokens)
    expected = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5 + bias, dim=-1) @ v
    # strided views, as the encoder hands them over (q, k, v sliced out of one qkv tensor)
    qkv = torch.stack([q, k, v]).permute(1, 3, 0, 2, 4).contiguous().permute(2, 0, 3, 1, 4)
    actual = attention_with_decomposed_bias(*qkv.unbind(0), bias_h, bias_w, chunk_bytes=chunk_bytes)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_banded_attention_in_bf16_stays_close_to_fp32():
    from napari_sam.model.sam.image_encoder import attention_with_decomposed_bias

    q, k, v, bias_h, bias_w = _bias_terms(2, 3, 8, 8, 16, seed=1)
    full = attention_with_decomposed_bias(q, k, v, bias_h, bias_w, chunk_bytes=1 << 40)
    low = [t.bfloat16() for t in (q, k, v, bias_h, bias_w)]
    banded = attention_with_decomposed_bias(*low, chunk_bytes=3 * 8 * 8 * 64 * 2)
    assert banded.dtype == torch.bfloat16
    torch.testing.assert_close(banded.float(), full, rtol=0.05, atol=0.05)


def test_encoder_forward_is_unchanged_by_banding(tiny_model, monkeypatch):
    from napari_sam.model.sam import image_encoder

    x = torch.randn(1, 3, tiny_model.config.img_size, tiny_model.config.img_size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        monkeypatch.setattr(image_encoder, "CPU_BIAS_CHUNK_BYTES", 1 << 40)
        whole = tiny_model.image_encoder(x)
        monkeypatch.setattr(image_encoder, "CPU_BIAS_CHUNK_BYTES", 1)
        banded = tiny_model.image_encoder(x)
    torch.testing.assert_close(banded, whole, rtol=1e-4, atol=1e-5)


def test_compiled_encoder_matches_eager_and_falls_back_when_compiling_fails(tiny_model):
    from napari_sam.engine.predict.device import compile_encoder

    x = torch.randn(1, 3, tiny_model.config.img_size, tiny_model.config.img_size)
    with torch.inference_mode():
        eager = tiny_model.image_encoder(x)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    assert compile_encoder(tiny_model, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="running it eagerly"), torch.inference_mode():
        fallback = tiny_model.image_encoder(x)
    with torch.inference_mode():
        again = tiny_model.image_encoder(x)  # no second warning, no second attempt
    torch.testing.assert_close(fallback, eager)
    torch.testing.assert_close(again, eager)


def test_compile_with_a_working_backend_gives_the_eager_output(trained_model):
    from napari_sam.engine.predict.device import compile_encoder

    x = torch.randn(1, 3, trained_model.config.img_size, trained_model.config.img_size)
    with torch.inference_mode():
        eager = trained_model.image_encoder(x)
    torch._dynamo.reset()
    assert compile_encoder(trained_model, backend="eager")  # dynamo's tracing without a C++ toolchain
    with torch.inference_mode():
        compiled = trained_model.image_encoder(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_int8_quantises_a_copy_and_keeps_masks_close(trained_model):
    from napari_sam.engine import Predictor
    from napari_sam.engine.datasets.synthetic import synthetic_image

    predictors = {name: Predictor(trained_model, device="cpu", precision=name) for name in ("fp32", "int8")}
    quantized = predictors["int8"].model
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())
    assert any(type(m) is torch.nn.Linear for m in trained_model.modules())  # the user's model is untouched
    assert quantized.config == trained_model.config
    assert predictors["int8"].autocast_dtype is None
    # an int8 embedding is not an fp32 one: caches keyed by the fingerprint must not mix them
    assert predictors["int8"].encoder_fingerprint() != predictors["fp32"].encoder_fingerprint()
    sample = synthetic_image((256, 256), seed=4)
    for predictor in predictors.values():
        predictor.set_image(sample.image)
    ious = []
    for index in range(1, min(int(sample.labels.max()), 8) + 1):
        rows, cols = np.nonzero(sample.labels == index)
        box = [rows.min(), cols.min(), rows.max(), cols.max()]
        masks = {name: p.predict(box=box, multimask=False)[0][0] for name, p in predictors.items()}
        union = np.logical_or(masks["fp32"], masks["int8"]).sum()
        ious.append(np.logical_and(masks["fp32"], masks["int8"]).sum() / max(union, 1))
    assert len(ious) >= 4 and np.mean(ious) >= 0.9, np.round(ious, 3)


def test_int8_is_refused_with_advice_off_the_cpu(trained_model, monkeypatch):
    from napari_sam.engine import Predictor
    from napari_sam.engine.errors import InputError
    from napari_sam.engine.predict import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "select_device", lambda device: torch.device("cuda"))
    with pytest.raises(InputError, match="CPU only.*bf16"):
        Predictor(trained_model, device="cuda", precision="int8")


def test_stage_rule_on_cpu_and_cuda_and_its_override():
    from napari_sam.engine.predict.stage_precision import (
        forced_stage_dtype,
        stage_dtype,
    )

    assert stage_dtype("encoder", torch.bfloat16, "cpu") == torch.bfloat16
    assert stage_dtype("decoder_batch", torch.bfloat16, "cpu") is None
    assert stage_dtype("decoder_batch", torch.bfloat16, "cuda") == torch.bfloat16
    assert stage_dtype("postprocess", torch.bfloat16, "cuda") is None
    assert stage_dtype("encoder", None, "cuda") is None
    with forced_stage_dtype("decoder_batch", torch.bfloat16):
        assert stage_dtype("decoder_batch", None, "cpu") == torch.bfloat16
    assert stage_dtype("decoder_batch", torch.bfloat16, "cpu") is None
    with pytest.raises(ValueError, match="Unknown stage"):
        stage_dtype("decoder", torch.bfloat16, "cpu")


def test_automatic_decodes_in_fp32_on_cpu_under_a_bf16_predictor(trained_model):
    from napari_sam.engine import Predictor
    from napari_sam.engine.automatic.generation import generate_labels
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.engine.predict.stage_precision import forced_stage_dtype

    predictor = Predictor(trained_model, device="cpu", precision="bf16")
    embedding = predictor.compute_embedding(synthetic_image((256, 256), seed=41).image)
    seen: list[torch.dtype] = []
    hook = trained_model.mask_decoder.transformer.register_forward_hook(lambda m, i, out: seen.append(out[0].dtype))
    params = AutomaticParams(points_per_side=8, pred_iou_thresh=0.5)
    try:
        fp32_labels = generate_labels(predictor, embedding=embedding, params=params)
        decoded_fp32 = list(seen)
        seen.clear()
        with forced_stage_dtype("decoder_batch", torch.bfloat16):
            bf16_labels = generate_labels(predictor, embedding=embedding, params=params)
    finally:
        hook.remove()
    assert decoded_fp32 and set(decoded_fp32) == {torch.float32}
    assert seen and set(seen) == {torch.bfloat16}
    assert fp32_labels.max() >= 3 and bf16_labels.max() >= 3


def test_banded_attention_trains_like_the_whole_bias():
    """Fine-tuning runs the banded CPU path with gradients: it must give the whole-bias gradients (it raised)."""
    from napari_sam.model.sam.image_encoder import attention_with_decomposed_bias

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8 * 8, 4, requires_grad=True) for _ in range(3))
    bias_h, bias_w = (torch.randn(1, 2, 8, 8, 8, requires_grad=True) for _ in range(2))
    grads = []
    for chunk_bytes in (1 << 62, 1):  # one band; one query row per band
        out = attention_with_decomposed_bias(q, k, v, bias_h, bias_w, chunk_bytes=chunk_bytes)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v, bias_h, bias_w)))
    for whole, banded in zip(*grads):
        torch.testing.assert_close(banded, whole, rtol=1e-4, atol=1e-5)
