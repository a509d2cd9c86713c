"""Record reference outputs of Meta's segment-anything and MobileSAM as small golden files.

Run in the separate reference environment (it needs torchvision)::

    /work/refenv/bin/python tools/make_golden.py [--models tiny_vit_test vit_b vit_t]

For every model it builds the *reference* network with the sizes of our config
(``napari_sam.model.config``), fills it with ``tests/_weights.py``'s deterministic
weights, and writes ``tests/data/golden/<model>.npz`` (arrays) and ``<model>.json``
(seeds, input digests, prompts in both coordinate frames, versions). Two levels:

* model level: ``image_encoder(x)`` for a seeded normalised ``x``; prompt encoder and
  mask decoder outputs for seeded embeddings and fixed prompts (INPUT-frame (x, y));
* pipeline level: reference ``SamPredictor.set_image(uint8 RGB)`` + ``predict(...)``
  masks (bit-packed), scores and low-res logits for a non-square synthetic image.

Large arrays are stored as strided subsets plus full per-channel / per-position means
so every golden file stays small. ``tests/model/test_reference_equality.py`` replays all of it
against our implementation without importing the reference packages.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "data" / "golden"
FORMAT_VERSION = 1

ENCODER_INPUT_SEED = 11
DECODER_EMBEDDING_SEED = 12
DECODER_MASK_SEED = 13
IMAGE_SEED = 7

# Per model: the weight seed (picked so that the pipeline masks cover between 5 % and 95 %
# of the image: a random network often predicts all or nothing, which makes IoU meaningless),
# the pipeline image shape (non-square: exercises resize, padding and cropping) and the
# channel / spatial strides used when an array is too large to store whole.
PLAN = {
    "tiny_vit_test": {"weight_seed": 22, "image_shape": (300, 400), "channel_stride": 1, "logit_stride": 1},
    "vit_b": {"weight_seed": 2, "image_shape": (600, 800), "channel_stride": 16, "logit_stride": 4},
    "vit_t": {"weight_seed": 9, "image_shape": (600, 800), "channel_stride": 16, "logit_stride": 4},
}


def load_weights_module():
    """Import ``tests/_weights.py`` by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_golden_weights", REPO / "tests" / "_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


W = load_weights_module()


def build_reference_sam(config) -> torch.nn.Module:
    """The reference ``Sam`` with exactly ``config``'s sizes (eval mode, default init weights)."""
    if config.encoder.kind == "tiny_vit":
        from napari_sam.model.config import VIT_T

        # MobileSAM hard-codes its 1024-input / 64x64-grid TinyViT, so only VIT_T itself can be built.
        if config != VIT_T:
            raise ValueError("MobileSAM's reference TinyViT exists only at the vit_t size")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mobile_sam import sam_model_registry
        return sam_model_registry["vit_t"]().eval()

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    encoder = config.encoder
    width = config.prompt_embed_dim
    grid = config.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.img_size,
            patch_size=encoder.patch_size,
            embed_dim=encoder.embed_dim,
            depth=encoder.depth,
            num_heads=encoder.num_heads,
            mlp_ratio=encoder.mlp_ratio,
            out_chans=width,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=encoder.window_size,
            global_attn_indexes=tuple(encoder.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=width,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=width,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=width,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    return sam.eval()


def reference_predictor(model):
    """The matching reference ``SamPredictor`` (MobileSAM ships its own copy)."""
    if model.image_encoder.__class__.__module__.startswith("mobile_sam"):
        from mobile_sam import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor(model)


def embedding_summary(embedding: torch.Tensor, channel_stride: int, prefix: str, dtype=np.float32) -> dict:
    """A (1, C, E, E) embedding as: every ``channel_stride``-th channel whole, plus full channel and position means."""
    embedding = embedding.detach().float()
    return {
        f"{prefix}_subset": embedding[0, ::channel_stride].numpy().astype(dtype),
        f"{prefix}_channel_mean": embedding[0].mean(dim=(1, 2)).numpy(),
        f"{prefix}_position_mean": embedding[0].mean(dim=0).numpy(),
    }


def decoder_cases(config) -> list[dict]:
    """Model-level prompt cases in the INPUT frame (x, y), as plain lists for JSON."""
    size = config.img_size

    def at(fx: float, fy: float) -> list[float]:
        return [round(fx * size, 1), round(fy * size, 1)]

    return [
        {"name": "points_multimask", "points": [[at(0.30, 0.42), at(0.55, 0.35), at(0.70, 0.71)]], "labels": [[1, 1, 0]],
         "box": None, "mask": False, "multimask": True},
        {"name": "one_point_single", "points": [[at(0.52, 0.47)]], "labels": [[1]],
         "box": None, "mask": False, "multimask": False},
        {"name": "box_only", "points": None, "labels": None,
         "box": [[*at(0.20, 0.25), *at(0.66, 0.58)]], "mask": False, "multimask": False},
        {"name": "point_box_mask", "points": [[at(0.40, 0.40)]], "labels": [[1]],
         "box": [[*at(0.15, 0.20), *at(0.75, 0.80)]], "mask": True, "multimask": True},
        {"name": "batched_with_padding", "points": [[at(0.25, 0.30), at(0.60, 0.60)], [at(0.80, 0.20), at(0.0, 0.0)]],
         "labels": [[1, 0], [1, -1]], "box": None, "mask": False, "multimask": True},
    ]


@torch.inference_mode()
def record_model_level(model, config, plan) -> tuple[dict, dict]:
    arrays: dict[str, np.ndarray] = {}
    size, grid, width = config.img_size, config.embedding_size, config.prompt_embed_dim
    stride = plan["channel_stride"]
    x = W.standard_normal((1, 3, size, size), ENCODER_INPUT_SEED)
    arrays.update(embedding_summary(model.image_encoder(x), stride, "encoder"))
    arrays.update(embedding_summary(model.prompt_encoder.get_dense_pe(), stride, "dense_pe"))

    embedding = W.standard_normal((1, width, grid, grid), DECODER_EMBEDDING_SEED)
    cases = decoder_cases(config)
    for case in cases:
        batch = len(case["points"] if case["points"] is not None else case["box"])
        points = None
        if case["points"] is not None:
            points = (torch.tensor(case["points"], dtype=torch.float32), torch.tensor(case["labels"], dtype=torch.int64))
        boxes = torch.tensor(case["box"], dtype=torch.float32) if case["box"] is not None else None
        masks = None
        if case["mask"]:
            low = config.low_res_mask_size
            masks = 4.0 * W.standard_normal((batch, 1, low, low), DECODER_MASK_SEED)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = model.mask_decoder(
            # One image embedding shared by all prompt sets, as the official predictor calls it.
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=case["multimask"],
        )
        name = case["name"]
        arrays[f"decoder/{name}/sparse"] = sparse.numpy()
        dense_summary = embedding_summary(dense[:1], stride, f"decoder/{name}/dense")
        if not case["mask"]:
            # Without a mask prompt the dense embedding is one learnt vector everywhere: the means say it all.
            del dense_summary[f"decoder/{name}/dense_subset"]
        arrays.update(dense_summary)
        ls = plan["logit_stride"]
        arrays[f"decoder/{name}/low_res_logits"] = low_res[:, :, ::ls, ::ls].numpy()
        arrays[f"decoder/{name}/iou"] = iou.numpy()
        case["low_res_shape"] = list(low_res.shape)
    meta = {
        "encoder_input": {"shape": [1, 3, size, size], "seed": ENCODER_INPUT_SEED, "digest": W.array_digest(x.numpy())},
        "decoder_embedding": {"shape": [1, width, grid, grid], "seed": DECODER_EMBEDDING_SEED},
        "decoder_mask_input": {"scale": 4.0, "seed": DECODER_MASK_SEED, "shape": "(B, 1, low_res, low_res)"},
        "decoder_cases": cases,
    }
    return arrays, meta


def pipeline_cases(height: int, width: int) -> list[dict]:
    """Predictor cases in SAM's (x, y) image frame; napari (row, col) copies are added by ``to_napari``."""

    def at(fr: float, fc: float) -> list[float]:  # fractions of (rows, cols) -> SAM (x, y)
        return [float(round(fc * (width - 1))), float(round(fr * (height - 1)))]

    one_point = [at(0.45, 0.55)]
    several = [at(0.30, 0.25), at(0.52, 0.60), at(0.70, 0.40), at(0.15, 0.80), at(0.85, 0.85)]
    box = [*at(0.20, 0.30), *at(0.75, 0.80)]  # x0, y0, x1, y1
    return [
        {"name": "one_point_multimask", "points": one_point, "labels": [1], "box": None, "mask_from": None, "multimask": True},
        {"name": "one_point_single", "points": one_point, "labels": [1], "box": None, "mask_from": None, "multimask": False},
        {"name": "pos_neg_points", "points": several, "labels": [1, 1, 1, 0, 0], "box": None, "mask_from": None,
         "multimask": False},
        {"name": "pos_neg_points_multimask", "points": several, "labels": [1, 1, 1, 0, 0], "box": None, "mask_from": None,
         "multimask": True},
        {"name": "box_only", "points": None, "labels": None, "box": box, "mask_from": None, "multimask": False},
        {"name": "points_and_box", "points": [at(0.45, 0.55), at(0.25, 0.75)], "labels": [1, 0], "box": box,
         "mask_from": None, "multimask": False},
        # Feed back the best low-res logits of the first case, as interactive refinement does.
        {"name": "mask_feedback", "points": [at(0.45, 0.55), at(0.60, 0.35)], "labels": [1, 1], "box": None,
         "mask_from": "one_point_multimask", "multimask": False},
    ]


def to_napari(case: dict) -> dict:
    """Add the napari frame: points (row, col) = (y, x), box (min_row, min_col, max_row, max_col)."""
    case = dict(case)
    case["points_rc"] = None if case["points"] is None else [[y, x] for x, y in case["points"]]
    box = case["box"]
    case["box_rc"] = None if box is None else [box[1], box[0], box[3], box[2]]
    return case


@torch.inference_mode()
def record_pipeline(model, config, plan) -> tuple[dict, dict]:
    arrays: dict[str, np.ndarray] = {}
    height, width = plan["image_shape"]
    image = W.synthetic_cells_image(height, width, IMAGE_SEED)
    predictor = reference_predictor(model)
    predictor.set_image(image)
    arrays.update(embedding_summary(predictor.features, plan["channel_stride"], "pipeline/features", np.float16))

    cases = [to_napari(c) for c in pipeline_cases(height, width)]
    best_logits: dict[str, np.ndarray] = {}
    for case in cases:
        name = case["name"]
        mask_input = None
        if case["mask_from"] is not None:
            # Stored as float16 and fed back *after* the same rounding, so the test feeds identical input.
            mask_input = best_logits[case["mask_from"]].astype(np.float16)
            arrays[f"pipeline/{name}/mask_input"] = mask_input
            mask_input = mask_input.astype(np.float32)
        masks, scores, low_res = predictor.predict(
            point_coords=None if case["points"] is None else np.array(case["points"], dtype=np.float32),
            point_labels=None if case["labels"] is None else np.array(case["labels"], dtype=np.int64),
            box=None if case["box"] is None else np.array(case["box"], dtype=np.float32),
            mask_input=mask_input,
            multimask_output=case["multimask"],
        )
        best_logits[name] = low_res[int(np.argmax(scores))][None]
        arrays[f"pipeline/{name}/masks_packed"] = np.packbits(masks.astype(bool).ravel())
        arrays[f"pipeline/{name}/scores"] = scores.astype(np.float32)
        ls = plan["logit_stride"]
        arrays[f"pipeline/{name}/low_res_logits"] = low_res[:, ::ls, ::ls].astype(np.float16)
        case["masks_shape"] = list(masks.shape)
        case["foreground_fraction"] = [round(float(m.mean()), 4) for m in masks]
        # Fraction of full-resolution pixels whose logit is within 0.05 of the threshold:
        # an upper bound on the IoU loss small numeric differences can cause.
        full_logits = model.postprocess_masks(torch.from_numpy(low_res)[None], predictor.input_size, predictor.original_size)
        case["near_threshold_fraction"] = round(float((full_logits.abs() < 0.05).float().mean()), 5)
    meta = {
        "image": {"shape": [height, width, 3], "seed": IMAGE_SEED, "digest": W.array_digest(image),
                  "generator": "tests/_weights.py:synthetic_cells_image"},
        "input_size": list(predictor.input_size),
        "pipeline_cases": cases,
    }
    return arrays, meta


def make_golden(name: str) -> dict:
    from napari_sam.model.config import CONFIGS

    config = CONFIGS[name]
    plan = PLAN[name]
    model = W.load_deterministic_weights(build_reference_sam(config), plan["weight_seed"])
    model_arrays, model_meta = record_model_level(model, config, plan)
    pipe_arrays, pipe_meta = record_pipeline(model, config, plan)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": name,
        "reference": "mobile_sam (mobilesam-mirror)" if config.encoder.kind == "tiny_vit" else "segment_anything",
        "weight_seed": plan["weight_seed"],
        "channel_stride": plan["channel_stride"],
        "logit_stride": plan["logit_stride"],
        "frames": "points/box: SAM (x, y) image or input frame; points_rc/box_rc: napari (row, col)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "reference": importlib.metadata.version(
                "mobilesam-mirror" if config.encoder.kind == "tiny_vit" else "segment-anything"
            ),
            "pillow": importlib.metadata.version("pillow"),
        },
        **model_meta,
        **pipe_meta,
    }
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN_DIR / f"{name}.npz", **model_arrays, **pipe_arrays)
    (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PLAN), choices=list(PLAN))
    args = parser.parse_args(argv)
    for name in args.models:
        meta = make_golden(name)
        size_kib = (GOLDEN_DIR / f"{name}.npz").stat().st_size / 1024
        print(f"{name}: {size_kib:.0f} KiB")
        for case in meta["pipeline_cases"]:
            print(f"  {case['name']:<26} fg={case['foreground_fraction']} near_thr={case['near_threshold_fraction']}")


if __name__ == "__main__":
    sys.exit(main())
