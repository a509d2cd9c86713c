"""Record reference outputs of Meta's SAM 2.1 (the ``sam2`` package) as small golden files.

Run in a separate environment holding Meta's package (never in the project's)::

    python3 -m venv /tmp/w/venv-sam2
    SAM2_BUILD_CUDA=0 /tmp/w/venv-sam2/bin/pip install torch==2.14.1 torchvision==0.29.1 sam2
    /tmp/w/venv-sam2/bin/python tools/make_golden_sam2.py [--models tiny_sam2_test sam2.1_hiera_tiny]

For every config of ``napari_sam.model.config.SAM2_CONFIGS`` named, it builds Meta's
``SAM2Base`` with exactly those sizes (Hiera trunk, FPN neck, memory, and prompt encoder /
mask decoder of the config's widths), fills it with ``tests/_weights.py``'s deterministic
weights (keyed by the official state-dict names, so our side regenerates the same weights
and no weight file is committed), and writes ``tests/data/golden/sam2_<model>.npz`` and
``.json``:

* model level: the image embedding (with the no-memory embedding added) and the two
  high-resolution decoder features for a seeded normalised input, as
  ``SAM2ImagePredictor.set_image`` computes them from ``forward_image``;
* pipeline level: ``SAM2ImagePredictor.set_image(uint8 RGB)`` + ``predict(...)`` masks
  (bit-packed), scores and low-res logits for points, a box, points + box, mask input and
  multimask, on the same non-square synthetic image as SAM's goldens.

``tests/model/test_sam2_reference_equality.py`` replays it without importing ``sam2``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # our configs only (napari_sam.model.config imports nothing heavy)
GOLDEN_DIR = REPO / "tests" / "data" / "golden"
FORMAT_VERSION = 1

_spec = importlib.util.spec_from_file_location("_make_golden_sam", REPO / "tools" / "make_golden.py")
SAM_GOLDEN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SAM_GOLDEN)
W = SAM_GOLDEN.W  # tests/_weights.py

ENCODER_INPUT_SEED = SAM_GOLDEN.ENCODER_INPUT_SEED
IMAGE_SEED = SAM_GOLDEN.IMAGE_SEED

# Weight seeds picked so the pipeline masks cover between 5 % and 95 % of the image (a random
# network often predicts all or nothing, which makes IoU meaningless); strides keep files small.
PLAN = {
    "tiny_sam2_test": {"weight_seed": 1, "image_shape": (300, 400), "channel_stride": 1, "logit_stride": 1,
                       "memory_weight_seed": 7},
    "sam2.1_hiera_tiny": {"weight_seed": 4, "image_shape": (600, 800), "channel_stride": 16, "logit_stride": 4},
}


def build_reference_sam2(config, video: bool = False) -> torch.nn.Module:
    """Meta's SAM 2.1 model with ``config``'s sizes and the released sam2.1 settings (eval mode)."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import (
        CXBlock,
        Fuser,
        MaskDownSampler,
        MemoryEncoder,
    )
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    from sam2.modeling.sam.transformer import RoPEAttention, TwoWayTransformer
    from sam2.modeling.sam2_base import SAM2Base

    enc, dim, mem = config.encoder, config.prompt_embed_dim, config.memory_dim
    grid = config.embedding_size
    trunk = Hiera(
        embed_dim=enc.embed_dim, num_heads=enc.num_heads, stages=tuple(enc.stages),
        global_att_blocks=tuple(enc.global_att_blocks), window_spec=tuple(enc.window_spec),
        window_pos_embed_bkg_spatial_size=tuple(enc.window_pos_embed_bkg_spatial_size),
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=dim, normalize=True, temperature=10000),
        d_model=dim, backbone_channel_list=list(reversed(enc.stage_dims)),
        fpn_top_down_levels=list(config.fpn_top_down_levels), fpn_interp_model="nearest",
    )
    layer = MemoryAttentionLayer(
        activation="relu", dim_feedforward=config.memory_attention_mlp_dim, dropout=0.1, pos_enc_at_attn=False,
        d_model=dim, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(rope_theta=config.rope_theta, feat_sizes=[grid, grid], embedding_dim=dim,
                                     num_heads=config.memory_attention_heads, downsample_rate=1, dropout=0.1),
        cross_attention=RoPEAttention(rope_theta=config.rope_theta, feat_sizes=[grid, grid], rope_k_repeat=True,
                                      embedding_dim=dim, num_heads=config.memory_attention_heads, downsample_rate=1,
                                      dropout=0.1, kv_in_dim=mem),
    )
    memory_attention = MemoryAttention(d_model=dim, pos_enc_at_input=True, layer=layer,
                                       num_layers=config.memory_attention_layers)
    memory_encoder = MemoryEncoder(
        out_dim=mem, in_dim=dim,
        position_encoding=PositionEmbeddingSine(num_pos_feats=mem, normalize=True, temperature=10000),
        mask_downsampler=MaskDownSampler(embed_dim=dim, kernel_size=config.mask_downsampler_kernel_size,
                                         stride=config.mask_downsampler_stride,
                                         padding=config.mask_downsampler_kernel_size // 2,
                                         total_stride=config.mask_downsampler_total_stride),
        fuser=Fuser(CXBlock(dim=dim, kernel_size=config.memory_fuser_kernel_size,
                            padding=config.memory_fuser_kernel_size // 2, layer_scale_init_value=1e-6,
                            use_dwconv=True), num_layers=config.memory_fuser_layers),
    )
    settings = dict(
        num_maskmem=config.num_maskmem, image_size=config.img_size, backbone_stride=config.backbone_stride,
        sigmoid_scale_for_mem_enc=config.sigmoid_scale_for_mem_enc,
        sigmoid_bias_for_mem_enc=config.sigmoid_bias_for_mem_enc,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True, no_obj_embed_spatial=True,
        use_high_res_features_in_sam=True, multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True, add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True, only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True, max_obj_ptrs_in_encoder=config.max_obj_ptrs_in_encoder,
        # what sam2.build_sam adds for inference (apply_postprocessing=True)
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": config.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": config.dynamic_multimask_stability_thresh,
        },
    )
    image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=config.encoder.scalp)
    if video:
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        model = SAM2VideoPredictor(image_encoder=image_encoder, memory_attention=memory_attention,
                                   memory_encoder=memory_encoder, binarize_mask_from_pts_for_mem_enc=True,
                                   fill_hole_area=0, **settings)
    else:
        model = SAM2Base(image_encoder, memory_attention, memory_encoder, **settings)
    # SAM2Base fixes the heads' widths of the released models; rebuild them with the config's (same for those).
    model.sam_prompt_encoder = PromptEncoder(
        embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=config.num_multimask_outputs,
        transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=dim, mlp_dim=config.decoder_mlp_dim,
                                      num_heads=config.decoder_num_heads),
        transformer_dim=dim, iou_head_depth=config.iou_head_depth, iou_head_hidden_dim=config.iou_head_hidden_dim,
        use_high_res_features=True, iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True, **settings["sam_mask_decoder_extra_args"],
    )
    return model.eval()


def high_res_summary(features: list[torch.Tensor], plan: dict, prefix: str, dtype=np.float32) -> dict:
    """The decoder's high-res features (1, C, 4E, 4E) / (1, C, 2E, 2E) as strided subsets and means.

    Every ``channel_stride``-th channel at every ``logit_stride``-th pixel, the channel means, and
    the position means at the same pixel stride: a full-size hiera_tiny's are 2 M values otherwise.
    """
    arrays = {}
    cs, ps = plan["channel_stride"], plan["logit_stride"]
    for level, feature in enumerate(features):
        feature = feature.detach().float()[0]
        arrays[f"{prefix}{level}_subset"] = feature[::cs, ::ps, ::ps].numpy().astype(dtype)
        arrays[f"{prefix}{level}_channel_mean"] = feature.mean(dim=(1, 2)).numpy()
        arrays[f"{prefix}{level}_position_mean"] = feature.mean(dim=0)[::ps, ::ps].numpy()
    return arrays


@torch.inference_mode()
def record_model_level(model, config, plan) -> tuple[dict, dict]:
    size, stride = config.img_size, plan["channel_stride"]
    x = W.standard_normal((1, 3, size, size), ENCODER_INPUT_SEED)
    backbone_out = model.forward_image(x)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    feats = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(vision_feats, feat_sizes)]
    arrays = SAM_GOLDEN.embedding_summary(feats[-1], stride, "encoder")
    arrays.update(high_res_summary(feats[:-1], plan, "encoder_high_res"))
    arrays.update(SAM_GOLDEN.embedding_summary(model.sam_prompt_encoder.get_dense_pe(), stride, "dense_pe"))
    meta = {"encoder_input": {"shape": [1, 3, size, size], "seed": ENCODER_INPUT_SEED,
                              "digest": W.array_digest(x.numpy())}}
    return arrays, meta


@torch.inference_mode()
def record_pipeline(model, config, plan) -> tuple[dict, dict]:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    arrays: dict[str, np.ndarray] = {}
    height, width = plan["image_shape"]
    image = W.synthetic_cells_image(height, width, IMAGE_SEED)
    predictor = SAM2ImagePredictor(model)
    grid = config.embedding_size
    predictor._bb_feat_sizes = [(4 * grid, 4 * grid), (2 * grid, 2 * grid), (grid, grid)]  # fixed for 1024 there
    predictor.set_image(image)
    stride = plan["channel_stride"]
    arrays.update(SAM_GOLDEN.embedding_summary(predictor._features["image_embed"], stride, "pipeline/features",
                                               np.float16))
    arrays.update(high_res_summary(predictor._features["high_res_feats"], plan, "pipeline/high_res", np.float16))

    cases = [SAM_GOLDEN.to_napari(c) for c in SAM_GOLDEN.pipeline_cases(height, width)]
    cases.append(SAM_GOLDEN.to_napari(
        {"name": "box_multimask", "points": None, "labels": None, "box": cases[4]["box"], "mask_from": None,
         "multimask": True}))
    best_logits: dict[str, np.ndarray] = {}
    for case in cases:
        name = case["name"]
        mask_input = None
        if case["mask_from"] is not None:
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
        full = torch.nn.functional.interpolate(torch.from_numpy(low_res)[None], (height, width), mode="bilinear",
                                               align_corners=False)
        case["near_threshold_fraction"] = round(float((full.abs() < 0.05).float().mean()), 5)
    meta = {
        "image": {"shape": [height, width, 3], "seed": IMAGE_SEED, "digest": W.array_digest(image),
                  "generator": "tests/_weights.py:synthetic_cells_image"},
        "pipeline_cases": cases,
    }
    return arrays, meta


MEMORY_FRAME_SEEDS = (31, 32, 33, 34, 35, 36)


def memory_plan(config) -> dict:
    """A short tracking run in the INPUT frame (x, y): a click on frame 0, tracking frames 1..5, then a
    correction (one positive, one negative click) on frame 3 and frames 4, 5 tracked again after it."""
    size = config.img_size
    return {
        "frame_seeds": list(MEMORY_FRAME_SEEDS),
        "seed_frame": 0, "seed_points": [[0.45 * size, 0.40 * size]], "seed_labels": [1],
        "correction_frame": 3, "correction_points": [[0.50 * size, 0.45 * size], [0.20 * size, 0.80 * size]],
        "correction_labels": [1, 0],
        # (frame, kind) in order: "seed", "track" (no prompt), "correct" (points + the frame's previous logits)
        "steps": [[0, "seed"], [1, "track"], [2, "track"], [3, "track"], [4, "track"], [5, "track"], [3, "correct"],
                  [4, "track"], [5, "track"]],
    }


@torch.inference_mode()
def record_memory(model, config) -> tuple[dict, dict]:
    """Meta's ``track_step`` (SAM2VideoPredictor settings) through ``memory_plan``: per step the chosen
    low-res mask logits, object pointer, object score logit and memory features."""
    plan = memory_plan(config)
    frames = []
    for seed in plan["frame_seeds"]:
        x = W.standard_normal((1, 3, config.img_size, config.img_size), seed)
        _, feats, pos, sizes = model._prepare_backbone_features(model.forward_image(x))
        frames.append((feats, pos, sizes))
    output = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    arrays, num_frames = {}, len(frames)

    def points(coords, labels):
        return {"point_coords": torch.tensor([coords], dtype=torch.float32),
                "point_labels": torch.tensor([labels], dtype=torch.int32)}

    for index, (frame, kind) in enumerate(plan["steps"]):
        feats, pos, sizes = frames[frame]
        prompt, previous = None, None
        if kind == "seed":
            prompt = points(plan["seed_points"], plan["seed_labels"])
        elif kind == "correct":
            prompt = points(plan["correction_points"], plan["correction_labels"])
            previous = output["non_cond_frame_outputs"].pop(frame)["pred_masks"].clamp(-32.0, 32.0)
        out = model.track_step(
            frame_idx=frame, is_init_cond_frame=kind == "seed", current_vision_feats=feats,
            current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=prompt, mask_inputs=None,
            output_dict=output, num_frames=num_frames, track_in_reverse=False, run_mem_encoder=True,
            prev_sam_mask_logits=previous,
        )
        for key in ("pred_masks", "obj_ptr", "object_score_logits", "maskmem_features"):
            arrays[f"memory/{index}/{key}"] = out[key].float().numpy()
        # as the video predictor keeps them: memory features in bf16; every prompted frame conditions
        # (add_all_frames_to_correct_as_cond=True: a correction is kept when propagating again)
        out["maskmem_features"] = out["maskmem_features"].to(torch.bfloat16)
        output["cond_frame_outputs" if kind != "track" else "non_cond_frame_outputs"][frame] = out
    return arrays, {"memory": plan}


VIDEO_SEED = 41


def video_frames(n_frames: int = 6, height: int = 96, width: int = 128) -> np.ndarray:
    """(T, H, W, 3) uint8: a window moving across one synthetic cells image (frames of a short movie)."""
    big = W.synthetic_cells_image(height + 3 * n_frames, width + 4 * n_frames, VIDEO_SEED)
    return np.stack([big[3 * t : 3 * t + height, 4 * t : 4 * t + width] for t in range(n_frames)])


def video_plan() -> dict:
    """Propagation through ``video_frames``: one click on frame 2, forward then backward, then a correction
    (one positive, one negative click) on frame 4 and forward again. Points are (x, y) pixels of a frame."""
    return {"seed_frame": 2, "seed_points": [[60.0, 45.0]], "seed_labels": [1],
            "correction_frame": 4, "correction_points": [[66.0, 50.0], [20.0, 80.0]], "correction_labels": [1, 0],
            "frames_digest": W.array_digest(video_frames())}


@torch.inference_mode()
def record_video(model, config) -> tuple[dict, dict]:
    """Meta's ``SAM2VideoPredictor`` through ``video_plan``: per pass and frame the mask at frame size
    (bit-packed), the object pointer and the object score logit."""
    import tempfile

    from PIL import Image

    frames = video_frames()
    plan = video_plan()
    with tempfile.TemporaryDirectory() as folder:
        for t, frame in enumerate(frames):  # init_state reads a folder of JPEGs ...
            Image.fromarray(frame).save(Path(folder) / f"{t:05d}.jpg")
        state = model.init_state(folder)
    # ... but every frame goes in as the same uint8 pixels, through the image predictor's own transform
    # (torchvision Resize + Normalize, not JPEG + PIL resize), as our Predictor prepares planes
    from sam2.utils.transforms import SAM2Transforms

    transform = SAM2Transforms(resolution=config.img_size, mask_threshold=0.0)
    state["images"] = torch.stack([transform(frame) for frame in frames])
    state["cached_features"] = {}
    arrays: dict[str, np.ndarray] = {}

    def record(pass_name: str, outputs) -> list[int]:
        order = []
        for frame, _, masks in outputs:
            out = state["output_dict_per_obj"][0]
            stored = out["cond_frame_outputs"].get(frame) or out["non_cond_frame_outputs"][frame]
            arrays[f"video/{pass_name}/{frame}/mask_packed"] = np.packbits((masks[0, 0] > 0).numpy().ravel())
            arrays[f"video/{pass_name}/{frame}/obj_ptr"] = stored["obj_ptr"].float().numpy()
            arrays[f"video/{pass_name}/{frame}/object_score_logits"] = stored["object_score_logits"].float().numpy()
            order.append(int(frame))
        return order

    model.add_new_points_or_box(state, frame_idx=plan["seed_frame"], obj_id=1,
                                points=np.array(plan["seed_points"], np.float32), labels=np.array(plan["seed_labels"]))
    passes = {"forward": record("forward", model.propagate_in_video(state))}
    passes["backward"] = record("backward", model.propagate_in_video(state, reverse=True))
    model.add_new_points_or_box(state, frame_idx=plan["correction_frame"], obj_id=1,
                                points=np.array(plan["correction_points"], np.float32),
                                labels=np.array(plan["correction_labels"]))
    passes["corrected"] = record("corrected", model.propagate_in_video(state))
    plan["passes"] = passes
    plan["frame_shape"] = list(frames.shape[1:3])
    return arrays, {"video": plan}


def objects_plan() -> dict:
    """Three objects tracked together through ``video_frames``, each prompted on its own frame: a click
    (frame 1), a box (frame 3, ``[x0, y0, x1, y1]``) and a mask (frame 2, Meta's ``add_new_mask``: an
    ellipse at frame size); forward then backward, from the earliest prompted frame. Then a correction
    of the box object on frame 0 (last tracked backward) and forward again (pass ``corrected``)."""
    return {"objects": [
        {"frame": 1, "points": [[40.0, 30.0]], "labels": [1]},
        {"frame": 3, "box": [70.0, 40.0, 120.0, 90.0]},
        {"frame": 2, "mask_ellipse": {"center_rc": [48.0, 64.0], "radii_rc": [14.0, 20.0]}},
    ], "correction": {"object": 1, "frame": 0, "points": [[107.0, 74.0], [20.0, 20.0]], "labels": [1, 0]}}


def ellipse_mask(shape: tuple[int, int], center_rc, radii_rc) -> np.ndarray:
    """(H, W) bool ellipse (the mask prompt of ``objects_plan``)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - center_rc[0]) / radii_rc[0]) ** 2 + ((cols - center_rc[1]) / radii_rc[1]) ** 2 <= 1.0


@torch.inference_mode()
def record_video_objects(model, config) -> tuple[dict, dict]:
    """Both runs of ``objects_plan``: all its objects together (``objects/...``), then the mask object
    alone (``mask_alone/...``: a seed mask propagated with memory, forward then backward from its frame)."""
    arrays, meta = record_objects_run(model, config, objects_plan()["objects"], "objects",
                                      objects_plan()["correction"])
    meta["correction"] = objects_plan()["correction"]
    mask_object = [obj for obj in objects_plan()["objects"] if "mask_ellipse" in obj]
    mask_arrays, mask_meta = record_objects_run(model, config, mask_object, "mask_alone")
    arrays.update(mask_arrays)
    return arrays, {"objects": meta, "mask_alone": mask_meta}


def record_objects_run(model, config, objects: list[dict], prefix: str, correction: dict | None = None
                       ) -> tuple[dict, dict]:
    """Meta's ``SAM2VideoPredictor`` tracking ``objects`` (entries of ``objects_plan``) in one inference
    state: per pass, frame and object (``<prefix>/<pass>/<frame>/<object index>``) the mask at frame size
    (bit-packed) and the object score logit."""
    import tempfile

    from PIL import Image
    from sam2.utils.transforms import SAM2Transforms

    frames = video_frames()
    plan = {"objects": objects}
    with tempfile.TemporaryDirectory() as folder:
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(Path(folder) / f"{t:05d}.jpg")
        state = model.init_state(folder)
    transform = SAM2Transforms(resolution=config.img_size, mask_threshold=0.0)
    state["images"] = torch.stack([transform(frame) for frame in frames])  # the same uint8 pixels as ours
    state["cached_features"] = {}
    # An object tracked on a frame before its prompted one has memory but no object pointer yet; Meta's
    # code then hands the bf16 memory alone to the attention, which fails on CPU (on GPU autocast hides
    # it). With pointers, torch.cat promotes the memory to fp32: do the same here (values unchanged).
    attention_forward = model.memory_attention.forward

    def forward_fp32_memory(curr, memory, *args, **kwargs):
        return attention_forward(curr, memory.float(), *args, **kwargs)

    model.memory_attention.forward = forward_fp32_memory
    for index, obj in enumerate(plan["objects"]):
        if "mask_ellipse" in obj:
            mask = ellipse_mask(frames.shape[1:3], **obj["mask_ellipse"])
            model.add_new_mask(state, frame_idx=obj["frame"], obj_id=index, mask=mask)
        else:
            model.add_new_points_or_box(
                state, frame_idx=obj["frame"], obj_id=index,
                points=None if "points" not in obj else np.array(obj["points"], np.float32),
                labels=None if "labels" not in obj else np.array(obj["labels"]),
                box=None if "box" not in obj else np.array(obj["box"], np.float32))
    arrays: dict[str, np.ndarray] = {}
    passes = {}
    runs = [("forward", False), ("backward", True)] + ([("corrected", False)] if correction else [])
    for pass_name, reverse in runs:
        if pass_name == "corrected":  # a corrected frame conditions, as ours (and record_video's) keep it
            model.add_all_frames_to_correct_as_cond = True
            model.add_new_points_or_box(state, frame_idx=correction["frame"], obj_id=correction["object"],
                                        points=np.array(correction["points"], np.float32),
                                        labels=np.array(correction["labels"]))
        order = []
        for frame, obj_ids, masks in model.propagate_in_video(state, reverse=reverse):
            for obj_id in obj_ids:
                idx = state["obj_id_to_idx"][obj_id]
                out = state["output_dict_per_obj"][idx]
                stored = out["cond_frame_outputs"].get(frame) or out["non_cond_frame_outputs"][frame]
                key = f"{prefix}/{pass_name}/{frame}/{obj_id}"
                arrays[f"{key}/mask_packed"] = np.packbits((masks[idx, 0] > 0).numpy().ravel())
                arrays[f"{key}/object_score_logits"] = stored["object_score_logits"].float().numpy()
            order.append(int(frame))
        passes[pass_name] = order
    plan["passes"] = passes
    plan["frame_shape"] = list(frames.shape[1:3])
    plan["foreground_fraction"] = {
        key.removesuffix("/mask_packed"): round(float(np.unpackbits(value).mean()), 4)
        for key, value in arrays.items() if key.endswith("mask_packed")
    }
    del model.memory_attention.forward  # the class's own again
    return arrays, plan


def make_golden(name: str) -> dict:
    from napari_sam.model.config import SAM2_CONFIGS

    config = SAM2_CONFIGS[name]
    plan = PLAN[name]
    model = W.load_deterministic_weights(build_reference_sam2(config), plan["weight_seed"])
    model_arrays, model_meta = record_model_level(model, config, plan)
    pipe_arrays, pipe_meta = record_pipeline(model, config, plan)
    memory_arrays, memory_meta = {}, {}
    if "memory_weight_seed" in plan:
        # its own seed: one whose object is present on some frames and absent on others (occlusion decisions)
        video_model = W.load_deterministic_weights(build_reference_sam2(config, video=True), plan["memory_weight_seed"])
        memory_arrays, memory_meta = record_memory(video_model, config)
        memory_meta["memory"]["weight_seed"] = plan["memory_weight_seed"]
        video_model.add_all_frames_to_correct_as_cond = True  # a corrected frame conditions (kept on re-propagation)
        video_arrays, video_meta = record_video(video_model, config)
        memory_arrays.update(video_arrays)
        memory_meta.update(video_meta)
        objects_model = W.load_deterministic_weights(build_reference_sam2(config, video=True),
                                                     plan["memory_weight_seed"])
        objects_arrays, objects_meta = record_video_objects(objects_model, config)
        memory_arrays.update(objects_arrays)
        memory_meta.update(objects_meta)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": name,
        "reference": "sam2 (SAM2Base + SAM2ImagePredictor)",
        "weight_seed": plan["weight_seed"],
        "channel_stride": plan["channel_stride"],
        "logit_stride": plan["logit_stride"],
        "frames": "points/box: SAM (x, y) image frame; points_rc/box_rc: napari (row, col)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision"),
            "numpy": np.__version__,
            "reference": importlib.metadata.version("sam2"),
        },
        **model_meta,
        **pipe_meta,
        **memory_meta,
    }
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN_DIR / f"sam2_{name}.npz", **model_arrays, **pipe_arrays, **memory_arrays)
    (GOLDEN_DIR / f"sam2_{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PLAN), choices=list(PLAN))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    for name in args.models:
        meta = make_golden(name)
        size_kib = (GOLDEN_DIR / f"sam2_{name}.npz").stat().st_size / 1024
        print(f"{name}: {size_kib:.0f} KiB")
        for case in meta["pipeline_cases"]:
            print(f"  {case['name']:<26} fg={case['foreground_fraction']} near_thr={case['near_threshold_fraction']}")


if __name__ == "__main__":
    sys.exit(main())
