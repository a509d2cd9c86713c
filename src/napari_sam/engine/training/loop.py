"""Fine-tuning (or training from scratch) a SAM model on images with instance labels.

The recipe is SAM's interactive training, as its microscopy fine-tunes use it:

1. Each step takes a few images, prepares them exactly as the ``Predictor`` does
   (``to_uint8_rgb`` + ``image_to_model_input``) and embeds them once.
2. A few objects per image get a first prompt: a jittered box, one positive point,
   point + box, or several positive/negative points.
3. The decoder predicts; then, ``correction_iterations`` times, a point is added
   where the prediction is wrong (positive where the object was missed, negative
   where the mask spilled over), optionally with the previous low-res logits as
   mask input, and the decoder predicts again.
4. Every prediction is scored against the object's mask (focal or BCE, plus dice,
   in the input frame) and the IoU head against the actual IoU of its mask (MSE).
   A single point is ambiguous, so it gets SAM's three outputs and only the best is
   penalised; other prompts use the single output.

``finetune`` is a generator of :class:`FinetuneProgress` (loss, learning rate and,
periodically, validation IoU), so the CLI and a napari worker can show progress
and stop it. Checkpoints hold the model weights in the official state-dict layout
(``save_checkpoint``; they load anywhere SAM loads) and, beside them, a
``.train_state.pt`` file with the optimizer, schedule and step to resume from.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.training.prompt_sampling import object_centres
from napari_sam.model.config import PADDING, POSITIVE

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.training.data import PreparedSample, TrainingPair

MASK_LOSSES = ("focal_dice", "bce_dice")
# Kinds of first prompt and how often each is drawn.
PROMPT_KINDS = ("box", "point", "point_box", "points")


@dataclass
class FinetuneOptions:
    """Settings of a fine-tuning run (defaults suit fine-tuning a pretrained model)."""

    steps: int = 1000
    images_per_step: int = 4
    objects_per_image: int = 8
    correction_iterations: int = 2
    """Decoder passes after the first, each with one more correction point."""
    learning_rate: float = 1e-4
    min_learning_rate_ratio: float = 0.05
    """The cosine schedule ends at ``learning_rate * min_learning_rate_ratio``."""
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    freeze_image_encoder: bool = False
    """Train only prompt encoder + mask decoder (much faster; embeddings computed without gradients)."""
    mask_loss: str = "focal_dice"
    focal_weight: float = 20.0
    """Weight of focal (or BCE) against dice, 20:1 as in SAM."""
    iou_loss_weight: float = 1.0
    prompt_probabilities: tuple[float, float, float, float] = (0.3, 0.3, 0.2, 0.2)
    """Probabilities of the first prompt kinds box, point, point_box, points."""
    multimask_probability: float = 0.8
    """How often a single point is trained with the three ambiguity-aware outputs (else the single output)."""
    mask_input_probability: float = 0.5
    """How often a correction pass also gets the previous low-res logits as mask input."""
    box_jitter: float = 0.1
    min_object_size: int = 8
    """Objects smaller than this (input-frame pixels) are not used as targets."""
    augment: bool = True
    crop_size: int | None = None
    """Train on random windows of this many pixels of large images; None uses whole images (resized)."""
    validate_every: int = 100
    validation_objects_per_image: int = 20
    checkpoint_every: int = 500
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    """Autocast for the forward pass: fp32, bf16 (CPUs with bf16, recent GPUs), fp16 (GPU) or auto."""

    def __post_init__(self) -> None:
        if self.mask_loss not in MASK_LOSSES:
            raise InputError(f"mask_loss must be one of {', '.join(MASK_LOSSES)}; got {self.mask_loss!r}.")
        for name in ("steps", "images_per_step", "objects_per_image"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if self.correction_iterations < 0:
            raise InputError("correction_iterations must be >= 0.")
        if self.learning_rate <= 0:
            raise InputError("learning_rate must be positive.")
        if len(self.prompt_probabilities) != len(PROMPT_KINDS) or min(self.prompt_probabilities) < 0:
            raise InputError(f"prompt_probabilities must be {len(PROMPT_KINDS)} non-negative numbers.")
        if sum(self.prompt_probabilities) <= 0:
            raise InputError("prompt_probabilities must not all be zero.")


@dataclass
class FinetuneProgress:
    """One report of a running fine-tuning.

    ``loss`` etc. are the last step's (None in the report made before the first step);
    ``validation`` holds mean IoUs (``box``, ``point``, ``mean``) when the model was
    just validated; ``checkpoint`` the path written at this step, if any.
    """

    step: int
    total_steps: int
    loss: float | None = None
    mask_loss: float | None = None
    iou_loss: float | None = None
    train_iou: float | None = None
    """Mean IoU of the step's last decoder pass against its targets (a cheap running quality measure)."""
    learning_rate: float | None = None
    elapsed_s: float = 0.0
    validation: dict[str, float] | None = None
    checkpoint: str | None = None
    done: bool = False

    def describe(self) -> str:
        """One line for logs and status bars."""
        parts = [f"step {self.step}/{self.total_steps}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f} (mask {self.mask_loss:.4f}, iou {self.iou_loss:.4f})")
        if self.train_iou is not None:
            parts.append(f"train IoU {self.train_iou:.3f}")
        if self.learning_rate is not None:
            parts.append(f"lr {self.learning_rate:.2e}")
        if self.validation:
            parts.append("val IoU " + ", ".join(f"{k} {v:.3f}" for k, v in self.validation.items()))
        if self.checkpoint:
            parts.append(f"saved {self.checkpoint}")
        parts.append(f"{self.elapsed_s:.0f}s")
        return " | ".join(parts)


def training_state_path(checkpoint_path) -> Path:
    """Where the optimizer/schedule state of a checkpoint lives: ``model.pt`` -> ``model.train_state.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".train_state.pt")


# ----------------------------------------------------------------------------- data


def _as_pairs(data, what: str) -> Sequence[TrainingPair]:
    """Any sequence of (image, labels[, name]) -> a lazily validated sequence of TrainingPair."""
    from napari_sam.engine.training.data import check_training_data

    if data is None:
        raise InputError(f"No {what} given.")
    if isinstance(data, (str, Path)):
        raise InputError(f"{what}: pass pairs (see load_folder_pairs / pairs_from_arrays), not a path.")
    check_training_data(data, what)
    return _ValidatedPairs(data, what)


class _ValidatedPairs(Sequence):
    """Validates each (image, labels) item on access (lazy datasets are generated on access)."""

    def __init__(self, data: Sequence, what: str) -> None:
        self.data = data
        self.what = what

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from napari_sam.engine.training.data import TrainingPair, validate_pair

        item = self.data[index]
        if isinstance(item, TrainingPair):
            return item
        name = item[2] if len(item) > 2 else f"{self.what}[{index}]"
        return validate_pair(item[0], item[1], name=name)


def _step_image_indices(step: int, count: int, per_step: int, seed: int) -> list[int]:
    """Indices of the images used at ``step``: shuffled epochs, reproducible from (seed, step) alone."""
    indices = []
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, position = divmod(slot, count)
        order = np.random.default_rng([seed, epoch, 104729]).permutation(count)
        indices.append(int(order[position]))
    return indices


# ----------------------------------------------------------------------------- losses


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values (m, k, H, W)`` over the pixels where ``weight (m, 1, H, W)`` is 1 -> ``(m, k)``."""
    return (values * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp(min=1)


def mask_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    kind: str = "focal_dice",
    focal_weight: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask loss and actual IoU.

    ``logits (m, k, H, W)``, ``targets (m, 1, H, W)`` float 0/1, ``valid (m, 1, H, W)``
    float 0/1 (the image inside the padded input). Returns loss ``(m, k)`` =
    ``focal_weight * (focal or BCE) + dice`` and IoU ``(m, k)`` of the thresholded
    masks (no gradient).
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    probs = torch.sigmoid(logits)
    if kind == "focal_dice":
        p_true = probs * targets + (1 - probs) * (1 - targets)
        alpha = 0.25 * targets + 0.75 * (1 - targets)
        pixel_loss = alpha * bce * (1 - p_true) ** 2
    else:
        pixel_loss = bce
    pixel_term = _masked_mean(pixel_loss, valid)
    intersection = (probs * targets * valid).sum(dim=(-2, -1))
    total = ((probs + targets) * valid).sum(dim=(-2, -1))
    dice = 1 - (2 * intersection + 1) / (total + 1)
    with torch.no_grad():
        hard = (logits > 0) & (valid > 0)
        target_bool = targets > 0
        inter = (hard & target_bool).sum(dim=(-2, -1)).float()
        union = (hard | target_bool).sum(dim=(-2, -1)).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return focal_weight * pixel_term + dice, iou


# ----------------------------------------------------------------------------- one step


@dataclass
class _Prompts:
    """Prompt sets of the M objects of one step, input frame.

    coords ``(M, N, 2)`` (x, y), labels ``(M, N)`` (-1 padding), boxes ``(M, 4)``,
    has_box ``(M,)`` bool, multimask ``(M,)`` bool.
    """

    coords: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    has_box: torch.Tensor
    multimask: torch.Tensor

    def add_points(self, coords: torch.Tensor, labels: torch.Tensor) -> None:
        import torch

        self.coords = torch.cat([self.coords, coords], dim=1)
        self.labels = torch.cat([self.labels, labels], dim=1)


def _interior(targets: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Pixels at least ``width`` pixels inside each ``(M, H, W)`` mask (a cheap erosion)."""
    import torch.nn.functional as F

    outside = (~targets).float()[:, None]
    grown = F.max_pool2d(outside, kernel_size=2 * width + 1, stride=1, padding=width)
    return (grown[:, 0] == 0) & targets


def _first_prompts(
    targets: torch.Tensor,
    valid_sizes: list[tuple[int, int]],
    options: FinetuneOptions,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> _Prompts:
    """Draw each object's first prompt (box, point, point + box, or several points)."""
    import torch

    from napari_sam.engine.training.prompt_sampling import (
        box_prompts_from_masks,
        jitter_boxes,
        sample_negative_points,
        sample_points_in,
    )

    m = targets.shape[0]
    device = targets.device
    probabilities = np.asarray(options.prompt_probabilities, dtype=np.float64)
    kinds = rng.choice(len(PROMPT_KINDS), size=m, p=probabilities / probabilities.sum())
    # Users click inside objects, mostly away from the border: half the points come from the interior.
    interior = _interior(targets)
    use_interior = torch.as_tensor(rng.random(m) < 0.5, device=device) & interior.flatten(1).any(dim=1)
    point_regions = torch.where(use_interior[:, None, None], interior, targets)
    max_positive, max_negative = 3, 2
    positives, _ = sample_points_in(point_regions, max_positive, generator)
    negatives, has_negative_pixels = sample_negative_points(targets, max_negative, generator=generator)

    n_positive = np.where(kinds == PROMPT_KINDS.index("box"), 0, 1)
    several = kinds == PROMPT_KINDS.index("points")
    n_positive[several] = rng.integers(1, max_positive + 1, several.sum())
    n_negative = np.zeros(m, dtype=int)
    n_negative[several] = rng.integers(0, max_negative + 1, several.sum())
    n_negative[~has_negative_pixels.cpu().numpy()] = 0

    slots = np.arange(max_positive)[None, :]
    positive_labels = np.where(slots < n_positive[:, None], POSITIVE, PADDING)
    slots = np.arange(max_negative)[None, :]
    negative_labels = np.where(slots < n_negative[:, None], 0, PADDING)
    labels = torch.as_tensor(np.concatenate([positive_labels, negative_labels], axis=1), device=device)
    coords = torch.cat([positives, negatives], dim=1)
    # drop all-padding columns so prompts carry as few padding tokens as possible
    keep = (labels != PADDING).any(dim=0)
    coords, labels = coords[:, keep], labels[:, keep]

    boxes = box_prompts_from_masks(targets)
    per_image_valid = torch.as_tensor(valid_sizes, device=device, dtype=torch.float32)
    jittered = jitter_boxes(boxes, (int(per_image_valid[:, 0].max()), int(per_image_valid[:, 1].max())),
                            options.box_jitter, generator=generator)
    has_box = torch.as_tensor(np.isin(kinds, [PROMPT_KINDS.index("box"), PROMPT_KINDS.index("point_box")]),
                              device=device)
    single_point = kinds == PROMPT_KINDS.index("point")
    multimask = torch.as_tensor(single_point & (rng.random(m) < options.multimask_probability), device=device)
    return _Prompts(coords, labels.long(), jittered, has_box, multimask)


def _decode_groups(
    model,
    embeddings: torch.Tensor,
    image_index: torch.Tensor,
    prompts: _Prompts,
    mask_input: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run prompt encoder + decoder for all M prompt sets; returns all mask tokens.

    Prompt sets with and without a box (and with or without points) have different
    numbers of tokens, so they are decoded in groups. Returns low-res logits
    ``(M, T, L, L)`` and IoU predictions ``(M, T)`` for all ``T`` mask tokens
    (token 0: single output, 1..: the multimask outputs).
    """
    import torch

    has_points = (prompts.labels != PADDING).any(dim=1)
    group_key = prompts.has_box.long() * 2 + has_points.long()
    dense_pe = model.prompt_encoder.get_dense_pe()
    results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for key in torch.unique(group_key).tolist():
        rows = torch.nonzero(group_key == key).flatten()
        with_box, with_points = bool(key // 2), bool(key % 2)
        points = None
        if with_points:
            labels = prompts.labels[rows]
            keep = (labels != PADDING).any(dim=0)
            points = (prompts.coords[rows][:, keep], labels[:, keep])
        boxes = prompts.boxes[rows] if with_box else None
        masks = mask_input[rows] if mask_input is not None else None
        if points is None and boxes is None and masks is None:
            # no prompt at all (cannot happen for first prompts); decode with a padding point
            points = (prompts.coords[rows][:, :1], torch.full_like(prompts.labels[rows][:, :1], PADDING))
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = model.mask_decoder.predict_masks(
            image_embeddings=embeddings[image_index[rows]],
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        results.append((rows, low_res, iou))
    m = prompts.labels.shape[0]
    _, tokens, size, _ = results[0][1].shape
    all_low_res = results[0][1].new_zeros(m, tokens, size, size)
    all_iou = results[0][2].new_zeros(m, tokens)
    for rows, low_res, iou in results:
        all_low_res = all_low_res.index_copy(0, rows, low_res)
        all_iou = all_iou.index_copy(0, rows, iou)
    return all_low_res, all_iou


def _upscale_to_input(low_res: torch.Tensor, img_size: int) -> torch.Tensor:
    """Low-res logits ``(m, k, L, L)`` -> ``(m, k, S, S)``, the Predictor's first upsampling step."""
    import torch.nn.functional as F

    return F.interpolate(low_res, size=(img_size, img_size), mode="bilinear", align_corners=False)


def _select_objects(
    samples: list[PreparedSample], options: FinetuneOptions, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick up to ``objects_per_image`` objects per image.

    Returns targets ``(M, S, S)`` bool, the image index of each ``(M,)`` and the
    valid-region masks ``(M, 1, S, S)`` float.
    """
    import torch

    targets, image_index, valid = [], [], []
    for index, sample in enumerate(samples):
        labels = sample.labels
        counts = torch.bincount(labels.flatten())
        ids = torch.nonzero(counts >= options.min_object_size).flatten()
        ids = ids[ids != 0].cpu().numpy()
        if ids.size == 0:
            continue
        chosen = rng.choice(ids, size=min(options.objects_per_image, ids.size), replace=False)
        chosen_t = torch.as_tensor(chosen, device=labels.device)
        targets.append(labels[None] == chosen_t[:, None, None])
        image_index.extend([index] * len(chosen))
        h, w = sample.valid_size
        region = torch.zeros(1, 1, *labels.shape, device=labels.device)
        region[..., :h, :w] = 1
        valid.append(region.expand(len(chosen), -1, -1, -1))
    if not targets:
        raise InputError(
            f"No object of at least {options.min_object_size} pixels (in the model's input frame) in this "
            "step's images; objects may be too small after resizing to the model's input size."
        )
    device = samples[0].labels.device
    return torch.cat(targets), torch.as_tensor(image_index, device=device), torch.cat(valid)


def training_step_loss(
    model,
    samples: list[PreparedSample],
    options: FinetuneOptions,
    rng: np.random.Generator,
    generator: torch.Generator,
    autocast=contextlib.nullcontext,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (before ``backward``) and its parts.

    ``samples`` are prepared images (see ``prepare_sample``); prompts are drawn
    with ``rng`` / ``generator``. Returns the scalar loss and a dict with
    ``mask_loss``, ``iou_loss`` and ``train_iou`` (mean IoU of the last pass).
    """
    import torch

    from napari_sam.engine.training.prompt_sampling import sample_correction_points

    config = model.config
    targets, image_index, valid = _select_objects(samples, options, rng)
    target_float = targets[:, None].float()
    inputs = torch.cat([s.model_input for s in samples])
    with autocast():
        if options.freeze_image_encoder:
            with torch.no_grad():
                embeddings = model.image_encoder(inputs)
        else:
            embeddings = model.image_encoder(inputs)
    valid_sizes = [samples[i].valid_size for i in image_index.tolist()]

    prompts = _first_prompts(targets, valid_sizes, options, rng, generator)
    mask_input = None
    mask_total = torch.zeros((), device=inputs.device)
    iou_total = torch.zeros((), device=inputs.device)
    passes = 1 + options.correction_iterations
    last_iou = torch.zeros(())
    for iteration in range(passes):
        with autocast():
            low_res, iou_pred = _decode_groups(model, embeddings, image_index, prompts, mask_input)
        low_res, iou_pred = low_res.float(), iou_pred.float()
        multimask = prompts.multimask if iteration == 0 else torch.zeros_like(prompts.multimask)
        m = low_res.shape[0]
        rows = torch.arange(m, device=low_res.device)
        # single-output rows: token 0; ambiguous single points: the best of tokens 1..
        single_rows = torch.nonzero(~multimask).flatten()
        multi_rows = torch.nonzero(multimask).flatten()
        per_row_loss = low_res.new_zeros(m)
        per_row_iou_loss = low_res.new_zeros(m)
        chosen_token = torch.zeros(m, dtype=torch.long, device=low_res.device)
        chosen_iou = low_res.new_zeros(m)
        for group_rows, token_slice in ((single_rows, slice(0, 1)), (multi_rows, slice(1, None))):
            if group_rows.numel() == 0:
                continue
            logits = _upscale_to_input(low_res[group_rows, token_slice], config.img_size)
            loss, actual_iou = mask_losses(
                logits, target_float[group_rows], valid[group_rows], options.mask_loss, options.focal_weight
            )
            best_loss = loss.min(dim=1).values
            per_row_loss = per_row_loss.index_copy(0, group_rows, best_loss)
            predicted = iou_pred[group_rows, token_slice]
            per_row_iou_loss = per_row_iou_loss.index_copy(
                0, group_rows, ((predicted - actual_iou) ** 2).mean(dim=1)
            )
            # the mask a user would get: the highest predicted IoU
            pick = predicted.detach().argmax(dim=1)
            chosen_token[group_rows] = pick + token_slice.start
            chosen_iou[group_rows] = actual_iou.gather(1, pick[:, None])[:, 0]
        mask_total = mask_total + per_row_loss.mean()
        iou_total = iou_total + per_row_iou_loss.mean()
        last_iou = chosen_iou.mean().detach()

        if iteration + 1 < passes:
            with torch.no_grad():
                chosen_low_res = low_res[rows, chosen_token][:, None].detach()
                predicted_masks = _upscale_to_input(chosen_low_res, config.img_size)[:, 0] > 0
                predicted_masks &= valid[:, 0] > 0
                coords, labels = sample_correction_points(predicted_masks, targets, generator)
            prompts.add_points(coords, labels)
            use_mask = rng.random() < options.mask_input_probability
            mask_input = chosen_low_res if use_mask else None

    mask_loss = mask_total / passes
    iou_loss = iou_total / passes
    loss = mask_loss + options.iou_loss_weight * iou_loss
    parts = {"mask_loss": float(mask_loss.detach()), "iou_loss": float(iou_loss.detach()), "train_iou": float(last_iou)}
    return loss, parts


# ----------------------------------------------------------------------------- validation


def evaluate_prompted_iou(
    model,
    data,
    device=None,
    objects_per_image: int = 20,
    min_object_size: int = 8,
) -> dict[str, float]:
    """Mean IoU of single-prompt segmentations on ``data`` (pairs), measured in the model's input frame.

    For every object (up to ``objects_per_image`` per image, largest first): its tight
    box (single output) and one positive point at its most interior pixel (three
    outputs, the highest-scoring one taken), as a user would prompt. Returns
    ``{"box": ..., "point": ..., "mean": ...}``. The model is left in eval mode.
    """
    import torch

    from napari_sam.engine.predict.device import select_device
    from napari_sam.engine.training.data import prepare_sample
    from napari_sam.engine.training.prompt_sampling import box_prompts_from_masks

    device = select_device(device) if device is not None else next(model.parameters()).device
    pairs = _as_pairs(data, "validation data")
    model.eval()
    config = model.config
    box_ious: list[float] = []
    point_ious: list[float] = []
    with torch.inference_mode():
        dense_pe = model.prompt_encoder.get_dense_pe()
        for index in range(len(pairs)):
            sample = prepare_sample(pairs[index], config, device)
            labels = sample.labels.cpu().numpy()
            counts = np.bincount(labels.ravel())
            ids = [i for i in np.argsort(counts)[::-1] if i != 0 and counts[i] >= min_object_size]
            ids = np.asarray(ids[:objects_per_image], dtype=np.int64)
            if ids.size == 0:
                continue
            embedding = model.image_encoder(sample.model_input)
            targets = torch.as_tensor(labels[None] == ids[:, None, None], device=device)
            boxes = box_prompts_from_masks(targets)
            centres_rc = object_centres(np.where(np.isin(labels, ids), labels, 0))
            centres = torch.as_tensor(
                np.stack([centres_rc[int(i)][::-1] for i in ids]), dtype=torch.float32, device=device
            )[:, None]
            h, w = sample.valid_size
            valid = torch.zeros(1, 1, *labels.shape, device=device)
            valid[..., :h, :w] = 1
            target_float = targets[:, None].float()
            for kind, ious in (("box", box_ious), ("point", point_ious)):
                if kind == "box":
                    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
                    multimask = False
                else:
                    point_labels = torch.full(centres.shape[:2], POSITIVE, dtype=torch.long, device=device)
                    sparse, dense = model.prompt_encoder(points=(centres, point_labels), boxes=None, masks=None)
                    multimask = True
                low_res, scores = model.mask_decoder(embedding, dense_pe, sparse, dense, multimask_output=multimask)
                best = scores.argmax(dim=1)
                chosen = low_res[torch.arange(low_res.shape[0]), best][:, None]
                logits = _upscale_to_input(chosen.float(), config.img_size)
                _, iou = mask_losses(logits, target_float, valid.expand(len(ids), -1, -1, -1))
                ious.extend(iou[:, 0].tolist())
    box = float(np.mean(box_ious)) if box_ious else float("nan")
    point = float(np.mean(point_ious)) if point_ious else float("nan")
    return {"box": box, "point": point, "mean": (box + point) / 2}


def evaluate_with_predictor(
    model, data, device="cpu", precision: str = "fp32", min_object_size: int = 1
) -> dict[str, float]:
    """Mean IoU of one-prompt segmentations through the public ``Predictor`` (original pixel frame).

    For every object of every ``(image, labels)`` pair in ``data``:

    * ``box``: its tight box ``(min_row, min_col, max_row, max_col)``, single output;
    * ``point``: one positive point at its most interior pixel (``object_centres``),
      three outputs, the one with the highest score taken;
    * ``point_box``: that point and the box, single output.

    Returns the mean IoU of each, and ``objects``, the number of objects measured.
    """
    from napari_sam.engine.metrics import mask_iou
    from napari_sam.engine.predict.predictor import Predictor
    from napari_sam.engine.training.prompt_sampling import object_boxes

    pairs = _as_pairs(data, "evaluation data")
    predictor = Predictor(model, device=device, precision=precision)
    ious: dict[str, list[float]] = {"box": [], "point": [], "point_box": []}
    for index in range(len(pairs)):
        image, labels, _ = pairs[index]
        boxes_by_id = object_boxes(labels)
        centres_by_id = object_centres(labels)
        counts = np.bincount(labels.ravel())
        ids = [i for i in sorted(boxes_by_id) if counts[i] >= min_object_size]
        if not ids:
            continue
        predictor.set_image(image)
        boxes = np.stack([boxes_by_id[i] for i in ids])
        points = np.stack([centres_by_id[i] for i in ids])[:, None]
        point_labels = np.ones(points.shape[:2], dtype=np.int64)
        box_masks, _, _ = predictor.predict_batch(boxes=boxes, multimask=False)
        point_masks, point_scores, _ = predictor.predict_batch(points=points, labels=point_labels, multimask=True)
        both_masks, _, _ = predictor.predict_batch(points=points, labels=point_labels, boxes=boxes, multimask=False)
        best = point_scores.argmax(axis=1)
        for row, object_id in enumerate(ids):
            target = labels == object_id
            ious["box"].append(mask_iou(box_masks[row, 0], target))
            ious["point"].append(mask_iou(point_masks[row, best[row]], target))
            ious["point_box"].append(mask_iou(both_masks[row, 0], target))
    result = {kind: float(np.mean(values)) if values else float("nan") for kind, values in ious.items()}
    result["objects"] = len(ious["box"])
    return result


# ----------------------------------------------------------------------------- the loop


def _lr_factor(step: int, options: FinetuneOptions) -> float:
    """Linear warm-up, then cosine decay to ``min_learning_rate_ratio``."""
    if step < options.warmup_steps:
        return (step + 1) / options.warmup_steps
    span = max(1, options.steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / span)
    low = options.min_learning_rate_ratio
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _set_train_mode(model, freeze_image_encoder: bool) -> None:
    import torch

    model.train()
    for module in model.modules():
        # BatchNorm statistics (TinyViT) are not re-estimated from a handful of images
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    if freeze_image_encoder:
        model.image_encoder.eval()
        for parameter in model.image_encoder.parameters():
            parameter.requires_grad_(False)


def save_training_checkpoint(model, optimizer, step: int, options: FinetuneOptions, path) -> Path:
    """Write the weights (official layout, ``save_checkpoint``) and, beside them, the state to resume from."""
    import torch

    from napari_sam.model.checkpoint import save_checkpoint

    path = save_checkpoint(model, path)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "config_name": model.config.name,
    }
    state_path = training_state_path(path)
    tmp = state_path.with_name(state_path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(state_path)
    return path


def finetune(
    model,
    train_data,
    val_data=None,
    options: FinetuneOptions | None = None,
    checkpoint_path=None,
    resume: bool = False,
) -> Iterator[FinetuneProgress]:
    """Fine-tune ``model`` in place on ``train_data``; a generator of progress reports.

    ``train_data`` / ``val_data``: sequences of ``(image, labels)`` pairs (lists,
    ``load_folder_pairs``, ``pairs_from_arrays``, ``SyntheticDataset``...). Yields a
    report before the first step (with validation IoU if ``val_data``), after every
    step, and a final one with ``done=True``. With ``checkpoint_path`` the weights are
    saved there every ``checkpoint_every`` steps and at the end; with ``resume`` the
    run continues from the checkpoint and training state found there. Stop early by
    closing the generator; the model keeps the weights of the last step.
    """
    import torch

    from napari_sam.engine.predict.device import autocast as device_autocast
    from napari_sam.engine.predict.device import resolve_precision, select_device

    options = options or FinetuneOptions()
    train_pairs = _as_pairs(train_data, "training data")
    val_pairs = _as_pairs(val_data, "validation data") if val_data is not None else None
    device = select_device(options.device)
    autocast_dtype = resolve_precision(options.precision, device)
    model.to(device)
    _set_train_mode(model, options.freeze_image_encoder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise InputError("The model has no trainable parameters.")
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)

    start_step = 0
    if resume:
        if checkpoint_path is None:
            raise InputError("resume=True needs the checkpoint_path to resume from.")
        start_step = _load_training_state(model, optimizer, checkpoint_path, device)
        _set_train_mode(model, options.freeze_image_encoder)

    def autocast():
        return device_autocast(device, autocast_dtype)

    def validate() -> dict[str, float] | None:
        if val_pairs is None:
            return None
        result = evaluate_prompted_iou(model, val_pairs, device, options.validation_objects_per_image,
                                       options.min_object_size)
        _set_train_mode(model, options.freeze_image_encoder)
        return result

    try:
        yield from _training_loop(
            model, optimizer, trainable, train_pairs, val_pairs, options, device, autocast, validate,
            start_step, checkpoint_path,
        )
    finally:
        # leave the model ready for inference, whether the run finished or was stopped
        model.eval()
        if options.freeze_image_encoder:
            for parameter in model.image_encoder.parameters():
                parameter.requires_grad_(True)


def _training_loop(
    model, optimizer, trainable, train_pairs, val_pairs, options, device, autocast, validate, start_step,
    checkpoint_path,
) -> Iterator[FinetuneProgress]:
    import torch

    from napari_sam.engine.training.data import prepare_sample

    started = time.perf_counter()
    yield FinetuneProgress(start_step, options.steps, validation=validate(), elapsed_s=0.0)
    for step in range(start_step, options.steps):
        rng = np.random.default_rng([options.seed, step, 31])
        generator = torch.Generator(device=device)
        generator.manual_seed(int(rng.integers(2**62)))
        indices = _step_image_indices(step, len(train_pairs), options.images_per_step, options.seed)
        samples = [
            prepare_sample(train_pairs[i], model.config, device, rng, options.augment, options.crop_size)
            for i in indices
        ]
        learning_rate = options.learning_rate * _lr_factor(step, options)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        loss, parts = training_step_loss(model, samples, options, rng, generator, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
        optimizer.step()

        done = step + 1 == options.steps
        validation = None
        if val_pairs is not None and ((step + 1) % options.validate_every == 0 or done):
            validation = validate()
        saved = None
        if checkpoint_path is not None and ((step + 1) % options.checkpoint_every == 0 or done):
            saved = str(save_training_checkpoint(model, optimizer, step + 1, options, checkpoint_path))
        yield FinetuneProgress(
            step + 1,
            options.steps,
            loss=float(loss.detach()),
            mask_loss=parts["mask_loss"],
            iou_loss=parts["iou_loss"],
            train_iou=parts["train_iou"],
            learning_rate=learning_rate,
            elapsed_s=time.perf_counter() - started,
            validation=validation,
            checkpoint=saved,
            done=done,
        )
    if start_step >= options.steps:  # nothing left to do after a resume
        yield FinetuneProgress(start_step, options.steps, elapsed_s=0.0, done=True)


def _load_training_state(model, optimizer, checkpoint_path, device) -> int:
    """Load weights + optimizer state saved by ``save_training_checkpoint``; returns the step reached."""
    import torch

    from napari_sam.model.checkpoint import read_state_dict

    path = Path(checkpoint_path)
    state_path = training_state_path(path)
    if not path.exists() or not state_path.exists():
        raise InputError(
            f"Cannot resume: need both {path} and {state_path} (written by an earlier run with this checkpoint path)."
        )
    model.load_state_dict(read_state_dict(path))
    model.to(device)
    state = torch.load(state_path, map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def run_finetune(
    model,
    train_data,
    val_data=None,
    options: FinetuneOptions | None = None,
    checkpoint_path=None,
    resume: bool = False,
    on_progress: Callable[[FinetuneProgress], None] | None = None,
) -> list[FinetuneProgress]:
    """Run :func:`finetune` to the end; returns all progress reports (``on_progress`` sees each)."""
    reports = []
    for report in finetune(model, train_data, val_data, options, checkpoint_path, resume):
        reports.append(report)
        if on_progress is not None:
            on_progress(report)
    return reports


__all__ = [
    "FinetuneOptions",
    "FinetuneProgress",
    "evaluate_prompted_iou",
    "evaluate_with_predictor",
    "finetune",
    "mask_losses",
    "run_finetune",
    "save_training_checkpoint",
    "training_state_path",
    "training_step_loss",
]
