"""Filters and geometry for mask proposals: stability, boxes, NMS, nested suppression,
separable upsampling and small-region clean-up.

Boxes here are half-open integer (min_row, min_col, max_row, max_col) in pixels of the
array they were computed on, unlike the training code's SAM box prompts (inclusive (x, y)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from napari_sam.model.config import SamConfig


def stability_scores(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """(N, h, w) logits -> (N,) area above ``+offset`` / area above ``-offset`` (1 for empty masks).

    Parameters
    ----------
    logits
        (N, h, w) mask logits.
    offset
        The logit offset (``AutomaticParams.stability_offset``).

    Returns
    -------
    torch.Tensor
        (N,) float32 in [0, 1]; 1 where no pixel lies above ``-offset``.
    """
    import torch

    flat = logits.flatten(1)
    inner = (flat > offset).sum(1, dtype=torch.int32)
    outer = (flat > -offset).sum(1, dtype=torch.int32)
    ratio = inner.float() / outer.clamp(min=1).float()
    return torch.where(outer > 0, ratio, torch.ones_like(ratio))


def mask_bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, h, w) bool -> (N, 4) int64 (min_row, min_col, max_row + 1, max_col + 1); empty -> zeros.

    Parameters
    ----------
    masks
        (N, h, w) bool.

    Returns
    -------
    torch.Tensor
        (N, 4) int64 half-open boxes on ``masks``' device; all zeros for an empty mask.
    """
    import torch

    n, h, w = masks.shape
    rows = masks.any(2)
    cols = masks.any(1)
    row_idx = torch.arange(h, device=masks.device)
    col_idx = torch.arange(w, device=masks.device)
    min_row = torch.where(rows, row_idx, h).amin(1)
    max_row = torch.where(rows, row_idx, -1).amax(1) + 1
    min_col = torch.where(cols, col_idx, w).amin(1)
    max_col = torch.where(cols, col_idx, -1).amax(1) + 1
    boxes = torch.stack([min_row, min_col, max_row, max_col], 1)
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) boxes (min_row, min_col, max_row, max_col), half-open -> (N, M) IoU.

    Parameters
    ----------
    a, b
        (N, 4) and (M, 4) half-open boxes.

    Returns
    -------
    torch.Tensor
        (N, M) float32 IoU (0 between empty boxes).
    """
    import torch

    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(2)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter.float() / union.clamp(min=1e-9).float()


def _greedy_keep(conflicts: np.ndarray) -> list[int]:
    """Greedy suppression over items sorted best first: ``conflicts[i, j]`` lets kept i remove later j.

    Returns the positions (in that order) of the items kept.
    """
    suppressed = np.zeros(len(conflicts), dtype=bool)
    keep = []
    for i in range(len(conflicts)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1 :] |= conflicts[i, i + 1 :]  # only later (lower-scoring) items can be removed
    return keep


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, highest score first (ties: lower index first).

    Parameters
    ----------
    boxes
        (N, 4) half-open boxes.
    scores
        (N,) scores, higher is better.
    iou_thresh
        A box is suppressed by a kept better-scoring box whose IoU with it is above this.

    Returns
    -------
    torch.Tensor
        (K,) int64 indices into ``boxes``.
    """
    import torch

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_thresh).cpu().numpy()
    return order[torch.as_tensor(_greedy_keep(overlaps), dtype=torch.int64)]


def nested_suppression(masks: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Greedy suppression of nested masks: indices kept, best score first.

    Mask j is suppressed by a better-scoring kept mask i when
    ``|i & j| >= thresh * min(|i|, |j|)``.

    Parameters
    ----------
    masks
        (N, h, w) bool.
    scores
        (N,) scores, higher is better.
    thresh
        The fraction of the smaller mask that must lie inside the other
        (``AutomaticParams.nested_thresh``).

    Returns
    -------
    torch.Tensor
        (K,) int64 indices into ``masks``.
    """
    import torch

    order = torch.sort(scores, descending=True, stable=True).indices
    flat = masks[order].flatten(1).float()
    inter = (flat @ flat.T).cpu().numpy()
    area = np.diag(inter).copy()
    nested = inter >= thresh * np.minimum(area[:, None], area[None, :])
    return order[torch.as_tensor(_greedy_keep(nested), dtype=torch.int64)]


def bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) matrix M with ``M @ x`` == 1D bilinear resize (align_corners=False) of x.

    Parameters
    ----------
    in_size, out_size
        Lengths before and after resizing.

    Returns
    -------
    torch.Tensor
        (out_size, in_size) float32 on the CPU.
    """
    import torch
    import torch.nn.functional as F

    eye = torch.eye(in_size, dtype=torch.float32)[None]  # (1, in, in): channel k is the unit vector e_k
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False)[0].T.contiguous()


def upsampling_matrices(
    config: SamConfig, input_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable maps from low-res logits (L, L) to the original frame: rows (H, L), cols (W, L).

    ``rows @ logits @ cols.T`` equals the predictor's upsampling: bilinear to the
    padded input (S, S), crop to (h, w), bilinear to (H, W).

    Parameters
    ----------
    config
        The model's configuration (``img_size`` S, ``low_res_mask_size`` L).
    input_size
        (h, w) of the image content inside the S x S input.
    original_size
        (H, W) of the image.

    Returns
    -------
    rows, cols : torch.Tensor
        (H, L) and (W, L) float32 on the CPU.
    """
    s, low = config.img_size, config.low_res_mask_size
    to_input = bilinear_matrix(low, s)
    rows = bilinear_matrix(input_size[0], original_size[0]) @ to_input[: input_size[0]]
    cols = bilinear_matrix(input_size[1], original_size[1]) @ to_input[: input_size[1]]
    return rows, cols


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Fill holes and drop specks smaller than ``min_area`` pixels (4-connected objects, 8-connected holes).

    Background regions touching the border of ``mask`` are outside, not holes.

    Parameters
    ----------
    mask
        (h, w) bool.
    min_area
        Smallest area kept, in pixels; 0 or 1 changes nothing.

    Returns
    -------
    np.ndarray
        (h, w) bool; ``mask`` itself when nothing is removed or filled.
    """
    if min_area <= 1 or not mask.any():
        return mask
    from scipy import ndimage

    specks, count = ndimage.label(mask)
    if count > 1 or (count == 1 and mask.sum() < min_area):
        sizes = np.bincount(specks.ravel())
        keep = sizes >= min_area
        keep[0] = False
        mask = keep[specks]
    holes, count = ndimage.label(~mask, structure=np.ones((3, 3), dtype=bool))
    if count:
        sizes = np.bincount(holes.ravel())
        # background regions that touch the crop border are outside, not holes
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        fill = sizes < min_area
        fill[0] = False
        fill[border] = False
        if fill.any():
            mask = mask | fill[holes]
    return mask
