"""Automatic ("segment everything") mask generation for one SAM input.

A regular grid of single positive points is decoded in batches, three
masks per point. Everything that can be decided at the decoder's LOW resolution
(``L x L`` logits, ``L = config.low_res_mask_size``) is decided there, so the
expensive full-resolution work is spent only on the few hundred survivors out of
thousands of proposals:

0. the predicted IoU comes from the transformer's tokens, so prompts with no output above
   ``pred_iou_thresh`` are dropped before their masks are upscaled at all,
1. predicted-IoU filter (``pred_iou_thresh``), and masks must contain their own prompt point,
2. stability filter: area above logit ``+offset`` over area above ``-offset``
   (``stability_thresh``; area ratios do not depend on the resolution),
3. greedy non-maximum suppression on the low-resolution boxes (``nms_thresh``),
   run after every batch so memory stays bounded by the survivors.

The grid is decoded coarse to fine (``coarse_levels``): a point of a finer pass that lies
inside the smallest accepted mask of a coarser prompt is not decoded, since it would ask
for the same object again. Prompts are decoded in batches sized for the CPU cache, not
as large as memory allows (larger batches were measured slower on a CPU).

Survivors are then upsampled exactly as the predictor upsamples (bilinear to the
padded input, crop the padding, bilinear to the original size), but only inside
each mask's bounding box, using two separable interpolation matrices. Small holes
and specks are removed, masks are painted largest first (smaller, more specific
masks on top), masks that end up mostly hidden under others are dropped, and the
result is an instance label image.

Frames: images are (H, W) or (H, W, C) in napari's (row, col) pixel frame; the
label image has the same (H, W). Points are placed at the centres of an
``n x n`` grid of cells covering the image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.automatic.diagnostics import FilterReport, Tally
from napari_sam.engine.automatic.params import AutomaticParams
from napari_sam.engine.automatic.postprocess import (
    box_nms,
    mask_bounding_boxes,
    nested_suppression,
    remove_small_regions,
    stability_scores,
    upsampling_matrices,
)
from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.predict.predictor import ImageEmbedding, Predictor
    from napari_sam.model.config import SamConfig


@dataclass
class MaskProposals:
    """Masks that survived the low-resolution filters and NMS, best first.

    ``logits`` (N, L, L) float32 low-resolution logits over the padded input;
    ``scores`` (N,) predicted IoU; ``stability`` (N,); ``boxes`` (N, 4) as
    (min_row, min_col, max_row + 1, max_col + 1) in low-resolution pixels;
    ``original_size`` (H, W) and ``input_size`` (h, w) as in ``ImageEmbedding``.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# ----------------------------------------------------------------------------- helpers


def point_grid(points_per_side: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Points (n*n, 2) (row, col) at the centres of an n x n grid of cells over an (H, W) image,
    and their coarseness (n*n,) (see ``lattice_points``).

    Coordinates are continuous (0 = the image's top/left edge), as SAM's prompt frame.

    Parameters
    ----------
    points_per_side
        n, the number of cells along each side.
    size
        (H, W) of the image.

    Returns
    -------
    points : np.ndarray
        (n*n, 2) float64 (row, col), row-major.
    coarseness : np.ndarray
        (n*n,) int64, see :func:`lattice_points`.
    """
    n = int(points_per_side)
    return lattice_points((size[0] / n, size[1] / n), (0, 0), size)


def lattice_points(
    spacing: tuple[float, float], origin: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 2) (row, col) of a lattice fixed to a larger image, inside one window of it,
    and their coarseness (N,) int.

    The lattice has points at ``(k + 0.5) * spacing`` in the large image's frame; the
    window starts at ``origin`` there and has ``size`` (H, W). Points come back in the
    window's frame. Tiles of one image thus prompt the same image locations wherever
    their windows fall, so moving the tile grid does not move the prompts. A point's
    coarseness is the largest c with both lattice indices divisible by ``2**c`` (capped
    at 30): the points of coarseness >= c form the lattice of spacing ``2**c * spacing``.

    Parameters
    ----------
    spacing
        (row, col) distance between lattice points, in pixels of the large image.
    origin
        (row, col) of the window's top-left corner in the large image.
    size
        (H, W) of the window.

    Returns
    -------
    points : np.ndarray
        (N, 2) float64 (row, col) in the window's frame (continuous, 0 = its
        top/left edge), row-major; only the lattice points inside the window.
    coarseness : np.ndarray
        (N,) int64.
    """
    axes, ranks = [], []
    for step, start, length in zip(spacing, origin, size):
        first = int(np.ceil(start / step - 0.5))
        last = int(np.ceil((start + length) / step - 0.5))  # exclusive
        index = np.arange(first, last, dtype=np.int64)
        axes.append((index + 0.5) * step - start)
        ranks.append(_trailing_zeros(index))
    rows, cols = np.meshgrid(*axes, indexing="ij")
    row_rank, col_rank = np.meshgrid(*ranks, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1), np.minimum(row_rank, col_rank).ravel()


def _trailing_zeros(values: np.ndarray, cap: int = 30) -> np.ndarray:
    """Number of trailing zero bits of each integer (``cap`` for 0)."""
    values = np.abs(values)
    lowest_bit = values & -values
    zeros = np.full(values.shape, cap, dtype=np.int64)
    nonzero = values != 0
    zeros[nonzero] = np.minimum(np.log2(lowest_bit[nonzero]).round().astype(np.int64), cap)
    return zeros


def _decoder_batch_size(config, params: AutomaticParams, device) -> int:
    """Prompts per decoder call so that activations stay near the memory budget."""
    if params.points_per_batch is not None:
        return int(params.points_per_batch)
    budget = params.batch_memory_bytes
    if budget is None:
        budget = (128 << 20) if str(device).startswith("cpu") else (1 << 30)
    c, e, low = config.prompt_embed_dim, config.embedding_size, config.low_res_mask_size
    # per prompt: the expanded image tokens through the two-way transformer (a few copies),
    # the upscaled features (C/8 channels) and the output logits, all in fp32
    per_prompt = 4 * (6 * c * e * e + (c // 8 + 3) * low * low)
    return int(np.clip(budget // per_prompt, 16, 4096))


# ----------------------------------------------------------------------------- generation


def propose_masks(
    predictor: Predictor,
    embedding: ImageEmbedding,
    params: AutomaticParams,
    points: np.ndarray | None = None,
    coarseness: np.ndarray | None = None,
    report: FilterReport | None = None,
) -> MaskProposals:
    """Decode the point grid and keep the masks that pass the low-resolution filters and NMS.

    Parameters
    ----------
    predictor
        The predictor whose model decodes the prompts (its current embedding is not used).
    embedding
        The image's embedding from ``predictor.compute_embedding``.
    params
        Thresholds, batch size and ``coarse_levels``; validated first.
    points
        (N, 2) (row, col), continuous coordinates in the original frame, replacing
        the regular grid of ``params.points_per_side``.
    coarseness
        (N,) orders ``points`` coarse to fine (see :func:`lattice_points`; capped at
        ``params.coarse_levels``); None: one pass over all of them.
    report
        If given, this decoding's counts per filter and score histograms are added to it
        (:class:`~napari_sam.engine.automatic.diagnostics.FilterReport`; ``painting`` and
        ``kept`` are left to :func:`generate_labels`).

    Returns
    -------
    MaskProposals
        The surviving masks at low resolution, best first.

    Raises
    ------
    InputError
        ``params`` is invalid, or there are no points.
    """
    import torch

    params.validate()
    config = predictor.config
    device = predictor.device
    s, low = config.img_size, config.low_res_mask_size
    h_in, w_in = embedding.input_size
    # the part of the low-res grid that covers the image rather than the padding
    valid = (max(1, int(np.ceil(h_in * low / s))), max(1, int(np.ceil(w_in * low / s))))

    if points is None:
        points, coarseness = point_grid(params.points_per_side, embedding.original_size)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if points.shape[0] == 0:
        raise InputError("No prompt points: the point grid is empty.")
    levels = np.zeros(len(points), np.int64) if coarseness is None else np.asarray(coarseness)
    levels = np.minimum(levels, int(params.coarse_levels))
    scale = np.array([h_in / embedding.original_size[0], w_in / embedding.original_size[1]])
    xy = torch.as_tensor((points * scale)[:, ::-1].copy(), dtype=torch.float32, device=device)
    cells = (xy * (low / s)).long().clamp_(0, low - 1)  # each prompt's low-res pixel, (x, y)
    features = embedding.features.to(device)
    high_res = tuple(feature.to(device) for feature in getattr(embedding, "high_res_features", ()))
    dense_pe = predictor.model.prompt_encoder.get_dense_pe()
    batch = _decoder_batch_size(config, params, device)

    kept = _Survivors.empty(low, device)
    covered = torch.zeros((low, low), dtype=torch.bool, device=device)
    tally = Tally(device)

    def decode(prompts: torch.Tensor) -> _Survivors:
        return _decode_points(predictor, features, dense_pe, xy[prompts], cells[prompts], params, valid, tally, high_res)

    with torch.inference_mode():
        passes = sorted(set(levels.tolist()), reverse=True)
        for level in passes:
            todo = torch.as_tensor(np.flatnonzero(levels == level), device=device)
            candidates = todo.numel()
            todo = todo[~covered[cells[todo, 1], cells[todo, 0]]]
            tally.skipped_points += candidates - todo.numel()
            kept, found = _decode_batches(decode, todo, batch, kept, params.nms_thresh, tally)
            if level == passes[-1]:
                break  # the finest pass: nothing left to skip
            for survivors in found:
                covered |= _smallest_mask_per_prompt(survivors, valid, low)
        if params.nested_thresh is not None and len(kept) > 1:
            masks = kept.logits[:, : valid[0], : valid[1]] > 0
            before = len(kept)
            kept = kept.select(nested_suppression(masks, kept.scores, params.nested_thresh))
            tally.nested += before - len(kept)
    if report is not None:
        report.merge(tally.report(params.pred_iou_thresh, params.stability_thresh))
    return MaskProposals(
        kept.logits, kept.scores, kept.stability, kept.boxes, tuple(embedding.original_size), tuple(embedding.input_size)
    )


@dataclass
class _Survivors:
    """Masks of one or more decoder batches that passed the filters; ``prompt`` (N,) indexes their points."""

    logits: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    prompt: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, low: int, device: torch.device | str) -> _Survivors:
        """No masks yet.

        Parameters
        ----------
        low
            L, the side of the low-resolution logits.
        device
            Where the empty tensors live.

        Returns
        -------
        _Survivors
            Zero masks of (0, L, L) logits.
        """
        import torch

        return cls(
            torch.zeros((0, low, low), dtype=torch.float32, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, device=device),
            torch.zeros((0, 4), dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
        )

    @classmethod
    def cat(cls, parts: list[_Survivors]) -> _Survivors:
        """All masks of ``parts`` in order.

        Parameters
        ----------
        parts
            Survivors on one device.

        Returns
        -------
        _Survivors
            Their concatenation.
        """
        import torch

        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__))

    def select(self, index: torch.Tensor) -> _Survivors:
        """The masks at ``index``.

        Parameters
        ----------
        index
            Integer indices (or a bool mask) into the N masks.

        Returns
        -------
        _Survivors
            The selected masks, in the order of ``index``.
        """
        return _Survivors(*(getattr(self, name)[index] for name in self.__dataclass_fields__))


def _decode_batches(
    decode, todo, batch: int, kept: _Survivors, nms_thresh: float, tally: Tally
) -> tuple[_Survivors, list[_Survivors]]:
    """Decode the prompt indices ``todo`` (P,) ``batch`` at a time with ``decode``, NMS with ``kept`` after each.

    NMS over everything kept so far plus each batch keeps memory bounded by the survivors.
    Returns the masks kept and each batch's survivors (``prompt`` indexing all points).
    """
    found = []
    for start in range(0, todo.numel(), batch):
        prompts = todo[start : start + batch]
        survivors = decode(prompts)
        survivors.prompt = prompts[survivors.prompt]
        found.append(survivors)
        kept = _Survivors.cat([kept, survivors])
        before = len(kept)
        kept = kept.select(box_nms(kept.boxes, kept.scores, nms_thresh).to(kept.scores.device))
        tally.duplicates += before - len(kept)
    return kept, found


def _decode_points(
    predictor: Predictor, features, dense_pe, xy, cells, params: AutomaticParams, valid: tuple[int, int],
    tally: Tally, high_res: tuple = (),
) -> _Survivors:
    """Decode single positive points ``xy`` (B, 2) (x, y, input frame) into multimask outputs and
    keep the masks that pass the predicted-IoU, point-inside and stability filters.
    ``features`` (1, C, E, E) and ``dense_pe`` (1, C, E, E) are the image's embedding and its encoding.

    Masks are only computed for prompts with at least one output above ``pred_iou_thresh``:
    the IoU head reads the transformer's tokens, so the upscaling, the costliest part after
    the transformer, is skipped for prompts that cannot pass. ``tally`` counts what each filter drops.
    """
    import torch

    from napari_sam.engine.predict.device import autocast
    from napari_sam.engine.predict.stage_precision import stage_dtype

    model = predictor.model
    decoder = model.mask_decoder
    labels = torch.ones((xy.shape[0], 1), dtype=torch.int64, device=xy.device)
    # decoder batches may run in another precision than the encoder: the rule and its measurements
    # are in engine/predict/stage_precision.py
    with autocast(predictor.device, stage_dtype("decoder_batch", predictor.autocast_dtype, predictor.device)):
        sparse, dense = model.prompt_encoder(points=(xy[:, None, :], labels), boxes=None, masks=None)
        # without a mask prompt the dense embedding is the same for every prompt: pass it once,
        # so the transformer's first block projects the image once for the whole batch
        tokens, image_out = decoder.run_transformer(features, dense_pe, sparse, dense[:1])
        iou = decoder.iou_from(tokens)[:, 1:].float()  # the multimask outputs
        tally.add_decoded(iou, params.pred_iou_thresh)
        promising = torch.nonzero((iou >= params.pred_iou_thresh).any(1)).flatten()
        extra = {"high_res_features": high_res} if high_res else {}  # SAM 2's finer features
        logits = decoder.masks_from(tokens[promising], image_out[promising], features.shape[-2:], **extra)[:, 1:]
    per_prompt = iou.shape[1]
    logits = logits.float().flatten(0, 1)  # (P*3, L, L)
    iou = iou[promising].flatten()
    prompt = promising.repeat_interleave(per_prompt)
    keep = iou >= params.pred_iou_thresh
    if params.require_point_inside:
        at_point = logits[torch.arange(logits.shape[0], device=logits.device), cells[prompt, 1], cells[prompt, 0]]
        tally.add_point_outside(keep & (at_point <= 0))
        keep &= at_point > 0
    logits, iou, prompt = logits[keep], iou[keep], prompt[keep]
    inside = logits[:, : valid[0], : valid[1]]
    stability = stability_scores(inside, params.stability_offset)
    boxes = mask_bounding_boxes(inside > 0)
    keep = (stability >= params.stability_thresh) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    tally.add_stability(stability, keep)  # an empty mask counts as unstable
    return _Survivors(logits[keep], iou[keep], stability[keep], boxes[keep], prompt[keep])


def _smallest_mask_per_prompt(survivors: _Survivors, valid: tuple[int, int], low: int):
    """(L, L) bool: the union over prompts of each prompt's smallest surviving mask (low-res)."""
    import torch

    covered = torch.zeros((low, low), dtype=torch.bool, device=survivors.logits.device)
    if len(survivors) == 0:
        return covered
    masks = survivors.logits[:, : valid[0], : valid[1]] > 0
    areas = masks.flatten(1).sum(1).cpu().numpy()
    prompts = survivors.prompt.cpu().numpy()
    order = np.lexsort((areas, prompts))  # by prompt, then by area
    first = order[np.r_[True, prompts[order][1:] != prompts[order][:-1]]]
    covered[: valid[0], : valid[1]] = masks[torch.as_tensor(first, device=masks.device)].any(0)
    return covered


def proposals_to_masks(
    proposals: MaskProposals, config: SamConfig, min_area: int = 0
) -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
    """Upsample each proposal inside its box only.

    Yields ``(index, (row0, col0), mask)`` with ``mask`` a bool crop in the
    original frame starting at (row0, col0); empty masks are skipped.

    Parameters
    ----------
    proposals
        From :func:`propose_masks`.
    config
        The model's configuration (``img_size``, ``low_res_mask_size``).
    min_area
        Holes and specks smaller than this are removed from each mask
        (:func:`~napari_sam.engine.automatic.postprocess.remove_small_regions`).

    Yields
    ------
    index : int
        The proposal's position in ``proposals``.
    origin : tuple of int
        (row0, col0) of the crop in the original frame.
    mask : np.ndarray
        (h, w) bool, trimmed to the mask's own bounding box.
    """
    import torch

    if len(proposals) == 0:
        return
    rows_map, cols_map = upsampling_matrices(config, proposals.input_size, proposals.original_size)
    rows_map = rows_map.to(proposals.logits.device)
    cols_map = cols_map.to(proposals.logits.device)
    # a full-resolution pixel can only be positive where a positive low-res pixel contributes to it,
    # because every interpolation weight is >= 0: the box's support bounds the crop exactly
    row_support = rows_map > 0
    col_support = cols_map > 0
    boxes = proposals.boxes.cpu().numpy()
    with torch.inference_mode():
        for index in range(len(proposals)):
            r0, c0, r1, c1 = (int(v) for v in boxes[index])
            rows = torch.nonzero(row_support[:, r0:r1].any(1)).flatten()
            cols = torch.nonzero(col_support[:, c0:c1].any(1)).flatten()
            if rows.numel() == 0 or cols.numel() == 0:
                continue
            row0, row1 = int(rows[0]), int(rows[-1]) + 1
            col0, col1 = int(cols[0]), int(cols[-1]) + 1
            crop = rows_map[row0:row1] @ proposals.logits[index] @ cols_map[col0:col1].T
            mask = (crop > 0).cpu().numpy()
            mask = remove_small_regions(mask, min_area)
            rows_any, cols_any = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            if rows_any.size:
                # trim to the mask's own bounding box
                top, bottom, left, right = rows_any[0], rows_any[-1] + 1, cols_any[0], cols_any[-1] + 1
                yield index, (row0 + int(top), col0 + int(left)), mask[top:bottom, left:right]


def paint_labels(
    masks: Iterable[tuple[tuple[int, int], np.ndarray]],
    shape: tuple[int, int],
    min_area: int = 0,
    max_hidden_fraction: float = 0.5,
) -> np.ndarray:
    """Instance labels (H, W) int32 from ``(row0, col0), mask`` crops.

    Larger masks are painted first so smaller, more specific ones stay on top;
    masks whose visible part falls below ``1 - max_hidden_fraction`` of their area,
    or below ``min_area`` pixels, are removed. Labels are 1..N without gaps, in
    painting order (deterministic: ties keep the input order).

    Parameters
    ----------
    masks
        ``((row0, col0), mask)`` pairs: a bool crop and its top-left corner in (H, W).
    shape
        (H, W) of the label image.
    min_area
        Fewest visible pixels a mask keeps (at least 1 in any case).
    max_hidden_fraction
        Largest part of a mask's area that smaller masks may cover.

    Returns
    -------
    np.ndarray
        (H, W) int32 labels, 0 the background.
    """
    masks = list(masks)
    labels = np.zeros(shape, dtype=np.int32)
    if not masks:
        return labels
    areas = np.array([int(m.sum()) for _, m in masks])
    order = np.argsort(-areas, kind="stable")
    for label, index in enumerate(order, start=1):
        (row0, col0), mask = masks[index]
        labels[row0 : row0 + mask.shape[0], col0 : col0 + mask.shape[1]][mask] = label
    visible = np.bincount(labels.ravel(), minlength=len(masks) + 1)[1:]
    keep = (visible >= np.maximum(min_area, 1)) & (visible >= (1.0 - max_hidden_fraction) * areas[order])
    relabel = np.zeros(len(masks) + 1, dtype=np.int32)
    relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def generate_labels(
    predictor: Predictor,
    image: Any = None,
    params: AutomaticParams | None = None,
    intensity_range: tuple | None = None,
    embedding: ImageEmbedding | None = None,
    points: np.ndarray | None = None,
    coarseness: np.ndarray | None = None,
    report: FilterReport | None = None,
) -> np.ndarray:
    """Segment everything in one 2D image that fits one SAM input: (H, W) int32 labels, 0 = background.

    Images larger than the model's input are resized to it; use ``segment_everything``
    to tile them instead.

    Parameters
    ----------
    predictor
        Computes the embedding and decodes the prompts; its current image is not changed.
    image
        (H, W) or (H, W, C) of any dtype; may be None when ``embedding`` is given.
    params
        Settings; None: ``AutomaticParams()``.
    intensity_range
        As in :func:`~napari_sam.engine.predict.preprocessing.to_uint8_rgb`; only
        used to compute the embedding.
    embedding
        A precomputed embedding of the image; ``image`` is then not used.
    points
        (N, 2) (row, col) prompts replacing the regular grid; an empty array gives
        all-background labels.
    coarseness
        (N,) coarseness of ``points`` (see :func:`lattice_points`).
    report
        If given, what each filter rejected and the objects kept are added to it
        (:class:`~napari_sam.engine.automatic.diagnostics.FilterReport`).

    Returns
    -------
    np.ndarray
        (H, W) int32 labels at the image's original size, 0 the background.

    Raises
    ------
    InputError
        ``params`` is invalid, neither ``image`` nor ``embedding`` is given, or the
        image cannot be used.
    """
    params = params or AutomaticParams()
    params.validate()
    if embedding is None:
        if image is None:
            raise InputError("Give an image or its embedding.")
        embedding = predictor.compute_embedding(image, intensity_range)
    if points is not None and len(points) == 0:
        return np.zeros(embedding.original_size, dtype=np.int32)
    tile_report = FilterReport() if report is not None else None
    proposals = propose_masks(predictor, embedding, params, points, coarseness, tile_report)
    masks = [(origin, mask) for _, origin, mask in proposals_to_masks(proposals, predictor.config, params.min_area)]
    labels = paint_labels(masks, embedding.original_size, params.min_area, params.max_hidden_fraction)
    if report is not None:
        tile_report.kept = int(labels.max()) if labels.size else 0
        tile_report.painting = len(proposals) - tile_report.kept  # emptied by min_area, or hidden
        report.merge(tile_report)
    return labels
