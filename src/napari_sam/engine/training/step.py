"""One training step of SAM's interactive recipe: objects, prompts, decoder passes, loss.

1. Up to ``objects_per_image`` objects of each prepared image become targets.
2. Each gets a first prompt (``first_prompts``): a jittered box, one positive point,
   point + box, or several positive/negative points.
3. The decoder predicts; then, ``correction_iterations`` times, a point is added where
   the prediction is wrong, optionally with the previous low-res logits as mask
   input, and the decoder predicts again.
4. Every pass is scored against the objects' masks (focal or BCE, plus dice, in the
   input frame) and the IoU head against the actual IoU of its mask (MSE). A single
   point is ambiguous, so it gets SAM's three outputs and only the best is penalised;
   other prompts use the single output.
5. A model with an instance decoder (``model.instance_decoder``) trains it jointly, as
   micro-sam does: its maps of the same image embeddings against the targets of
   ``instance_targets``, weighted by ``decoder_loss_weight``, join the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.training.instance_targets import samples_decoder_loss
from napari_sam.engine.training.losses import mask_losses
from napari_sam.engine.training.prompt_sampling import (
    PromptSet,
    first_prompts,
    sample_correction_points,
)
from napari_sam.model.config import PADDING

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.training.data import PreparedSample
    from napari_sam.engine.training.options import FinetuneOptions


@dataclass
class _Targets:
    """The objects of one step, input frame: masks ``(M, S, S)`` bool, their image ``(M,)``, valid regions."""

    masks: torch.Tensor
    image_index: torch.Tensor
    valid: torch.Tensor
    """``(M, 1, S, S)`` float 0/1: the image inside the padded input."""

    @property
    def masks_float(self) -> torch.Tensor:
        return self.masks[:, None].float()


@dataclass
class _PassScore:
    """Losses of one decoder pass (scalars) and the output a user would get per object."""

    mask_loss: torch.Tensor
    iou_loss: torch.Tensor
    chosen_token: torch.Tensor
    """``(M,)`` index of the mask token with the highest predicted IoU."""
    train_iou: torch.Tensor


def _valid_region(shape: tuple[int, int], valid_size: tuple[int, int], device) -> torch.Tensor:
    """``(1, 1, S, S)`` float mask of the image (``valid_size``) inside the padded input."""
    import torch

    region = torch.zeros(1, 1, *shape, device=device)
    region[..., : valid_size[0], : valid_size[1]] = 1
    return region


def _select_objects(samples: list[PreparedSample], options: FinetuneOptions, rng: np.random.Generator) -> _Targets:
    """Pick up to ``objects_per_image`` objects (of at least ``min_object_size`` pixels) per image."""
    import torch

    masks, image_index, valid = [], [], []
    for index, sample in enumerate(samples):
        ids, counts = torch.unique(sample.labels, return_counts=True)
        ids = ids[(counts >= options.min_object_size) & (ids != 0)].cpu().numpy()
        if ids.size == 0:
            continue
        chosen = torch.as_tensor(rng.choice(ids, size=min(options.objects_per_image, ids.size), replace=False),
                                 device=sample.labels.device)
        masks.append(sample.labels[None] == chosen[:, None, None])
        image_index.extend([index] * len(chosen))
        valid.append(_valid_region(sample.labels.shape, sample.valid_size, sample.labels.device)
                     .expand(len(chosen), -1, -1, -1))
    if not masks:
        raise InputError(
            f"No object of at least {options.min_object_size} pixels (in the model's input frame) in this "
            "step's images; objects may be too small after resizing to the model's input size."
        )
    device = samples[0].labels.device
    return _Targets(torch.cat(masks), torch.as_tensor(image_index, device=device), torch.cat(valid))


def _decode_group(model, embeddings, image_index, prompts: PromptSet, rows, layout, mask_input, dense_pe,
                  high_res=None):
    """Prompt encoder + decoder for the prompt sets ``rows``, which share one ``layout`` (with_box, with_points)."""
    import torch

    with_box, with_points = layout
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
    decoder, images = model.mask_decoder, image_index[rows]
    if high_res is None:
        return decoder.predict_masks(
            image_embeddings=embeddings[images],
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
    # SAM 2: every mask token's output, the high-resolution features joining the upscaling
    tokens, image_out = decoder.run_transformer(embeddings[images], dense_pe, sparse, dense)
    masks = decoder.masks_from(tokens, image_out, embeddings.shape[-2:], tuple(f[images] for f in high_res))
    return masks, decoder.iou_from(tokens)


def decode_groups(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    image_index: torch.Tensor,
    prompts: PromptSet,
    mask_input: torch.Tensor | None,
    high_res_features: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run prompt encoder + decoder for all M prompt sets; returns all mask tokens.

    Prompt sets with and without a box (and with or without points) have different
    numbers of tokens, so they are decoded in groups. Returns low-res logits
    ``(M, T, L, L)`` and IoU predictions ``(M, T)`` for all ``T`` mask tokens
    (token 0: single output, 1..: the multimask outputs).

    Parameters
    ----------
    model
        The SAM model (``prompt_encoder``, ``mask_decoder``).
    embeddings
        ``(B, C, E, E)`` image embeddings of the step's images.
    image_index
        ``(M,)`` which embedding each prompt set belongs to.
    prompts
        The M prompt sets, input frame.
    mask_input
        ``(M, 1, L, L)`` low-res logits of the previous pass, or None.
    high_res_features
        SAM 2: the decoder's two high-resolution features of the step's images
        (``(B, C/8, 4E, 4E)``, ``(B, C/4, 2E, 2E)``); None for SAM.

    Returns
    -------
    low_res : torch.Tensor
        ``(M, T, L, L)`` logits, in the order of ``prompts``.
    iou : torch.Tensor
        ``(M, T)`` predicted IoUs.
    """
    import torch

    has_points = (prompts.labels != PADDING).any(dim=1)
    group_key = prompts.has_box.long() * 2 + has_points.long()
    dense_pe = model.prompt_encoder.get_dense_pe()
    results = []
    for key in torch.unique(group_key).tolist():
        rows = torch.nonzero(group_key == key).flatten()
        layout = (bool(key // 2), bool(key % 2))
        results.append((rows, *_decode_group(model, embeddings, image_index, prompts, rows, layout, mask_input,
                                             dense_pe, high_res_features)))
    m = prompts.labels.shape[0]
    _, tokens, size, _ = results[0][1].shape
    all_low_res = results[0][1].new_zeros(m, tokens, size, size)
    all_iou = results[0][2].new_zeros(m, tokens)
    for rows, low_res, iou in results:
        all_low_res = all_low_res.index_copy(0, rows, low_res)
        all_iou = all_iou.index_copy(0, rows, iou)
    return all_low_res, all_iou


def upscale_to_input(low_res: torch.Tensor, img_size: int) -> torch.Tensor:
    """Low-res logits ``(m, k, L, L)`` -> ``(m, k, S, S)``, the Predictor's first upsampling step.

    Parameters
    ----------
    low_res
        ``(m, k, L, L)`` logits.
    img_size
        S, the model's input size.

    Returns
    -------
    torch.Tensor
        ``(m, k, S, S)`` bilinear (``align_corners=False``), padding included.
    """
    import torch.nn.functional as F

    return F.interpolate(low_res, size=(img_size, img_size), mode="bilinear", align_corners=False)


def _score_pass(
    low_res: torch.Tensor, iou_pred: torch.Tensor, multimask: torch.Tensor, targets: _Targets,
    options: FinetuneOptions, img_size: int,
) -> _PassScore:
    """Losses of one decoder pass: rows with ``multimask`` use the best of tokens 1.., the others token 0."""
    import torch

    m = low_res.shape[0]
    mask_loss, iou_loss = low_res.new_zeros(m), low_res.new_zeros(m)
    chosen_token = torch.zeros(m, dtype=torch.long, device=low_res.device)
    chosen_iou = low_res.new_zeros(m)
    groups = ((torch.nonzero(~multimask).flatten(), slice(0, 1)), (torch.nonzero(multimask).flatten(), slice(1, None)))
    for rows, tokens in groups:
        if rows.numel() == 0:
            continue
        logits = upscale_to_input(low_res[rows, tokens], img_size)
        loss, actual_iou = mask_losses(logits, targets.masks_float[rows], targets.valid[rows], options.mask_loss,
                                       options.focal_weight)
        predicted = iou_pred[rows, tokens]
        mask_loss = mask_loss.index_copy(0, rows, loss.min(dim=1).values)
        iou_loss = iou_loss.index_copy(0, rows, ((predicted - actual_iou) ** 2).mean(dim=1))
        # the mask a user would get: the highest predicted IoU
        pick = predicted.detach().argmax(dim=1)
        chosen_token[rows] = pick + tokens.start
        chosen_iou[rows] = actual_iou.gather(1, pick[:, None])[:, 0]
    return _PassScore(mask_loss.mean(), iou_loss.mean(), chosen_token, chosen_iou.mean().detach())


def _correction(
    low_res: torch.Tensor, chosen_token: torch.Tensor, targets: _Targets, img_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A correction point per object where the chosen mask is wrong; returns coords, labels and that mask's logits."""
    import torch

    with torch.no_grad():
        rows = torch.arange(low_res.shape[0], device=low_res.device)
        chosen_low_res = low_res[rows, chosen_token][:, None].detach()
        predicted = (upscale_to_input(chosen_low_res, img_size)[:, 0] > 0) & (targets.valid[:, 0] > 0)
        coords, labels = sample_correction_points(predicted, targets.masks, generator)
    return coords, labels, chosen_low_res


def _embed(model, samples: list[PreparedSample], options: FinetuneOptions, autocast):
    """Image embeddings of the step's images and, for SAM 2, the high-res features (else None).

    Without gradients when the encoder is frozen: for SAM 2 that includes what the Predictor
    caches with the embedding (``no_mem_embed``, the decoder's ``conv_s0`` / ``conv_s1``), so a
    decoder-only fine-tune keeps cached embeddings valid (see ``encoder_fingerprint``).
    """
    import torch

    inputs = torch.cat([s.model_input for s in samples])
    grad = contextlib.nullcontext() if not options.freeze_image_encoder else torch.no_grad()
    with autocast(), grad:
        if callable(getattr(model, "encode_image", None)):  # SAM 2: its own entry point, as the Predictor's
            return model.encode_image(inputs)
        return model.image_encoder(inputs), None


def training_step_loss(
    model: torch.nn.Module,
    samples: list[PreparedSample],
    options: FinetuneOptions,
    rng: np.random.Generator,
    generator: torch.Generator,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (before ``backward``) and its parts.

    Parameters
    ----------
    model
        The SAM model being trained.
    samples
        Prepared images (see ``prepare_sample``), input frame.
    options
        The run's settings (objects, prompts, corrections, loss).
    rng, generator
        Random sources for objects and prompts (numpy and torch).
    autocast
        Makes the autocast context of the forward passes.

    Returns
    -------
    tuple
        The scalar loss and a dict with ``mask_loss``, ``iou_loss`` and ``train_iou``
        (mean IoU of the last pass), and ``decoder_loss`` when the instance decoder is trained.

    Raises
    ------
    InputError
        No image of the step has an object of at least ``min_object_size`` pixels.
    """
    import torch

    img_size = model.config.img_size
    targets = _select_objects(samples, options, rng)
    embeddings, high_res = _embed(model, samples, options, autocast)
    prompts = first_prompts(targets.masks, [samples[i].valid_size for i in targets.image_index.tolist()],
                            options, rng, generator)
    passes = 1 + options.correction_iterations
    mask_total = iou_total = torch.zeros((), device=embeddings.device)
    mask_input = None
    for iteration in range(passes):
        with autocast():
            low_res, iou_pred = decode_groups(model, embeddings, targets.image_index, prompts, mask_input, high_res)
        multimask = prompts.multimask if iteration == 0 else torch.zeros_like(prompts.multimask)
        score = _score_pass(low_res.float(), iou_pred.float(), multimask, targets, options, img_size)
        mask_total, iou_total = mask_total + score.mask_loss, iou_total + score.iou_loss
        if iteration + 1 < passes:
            coords, labels, chosen_low_res = _correction(low_res.float(), score.chosen_token, targets, img_size,
                                                         generator)
            prompts.add_points(coords, labels)
            mask_input = chosen_low_res if rng.random() < options.mask_input_probability else None
    mask_loss, iou_loss = mask_total / passes, iou_total / passes
    loss = mask_loss + options.iou_loss_weight * iou_loss
    parts = {"mask_loss": float(mask_loss.detach()), "iou_loss": float(iou_loss.detach()),
             "train_iou": float(score.train_iou)}
    decoder = getattr(model, "instance_decoder", None)
    if decoder is not None and options.decoder_loss_weight > 0:
        with autocast():
            decoder_loss, _ = samples_decoder_loss(decoder, embeddings, samples, img_size)
        loss = loss + options.decoder_loss_weight * decoder_loss
        parts["decoder_loss"] = float(decoder_loss.detach())
    return loss, parts


__all__ = ["decode_groups", "training_step_loss", "upscale_to_input"]
