"""Losses of SAM's interactive training: focal (or BCE) plus dice per mask, and the actual IoU.

All in SAM's input frame: logits upsampled to the ``S x S`` model input, targets and
the valid region (the image inside the padded input) at the same size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values (m, k, H, W)`` over the pixels where ``weight (m, 1, H, W)`` is 1 -> ``(m, k)``."""
    return (values * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp(min=1)


def _pixel_loss(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel focal loss (alpha 0.25, gamma 2, as in SAM) or plain BCE, ``(m, k, H, W)``."""
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    if kind != "focal_dice":
        return bce
    p_true = probs * targets + (1 - probs) * (1 - targets)
    alpha = 0.25 * targets + 0.75 * (1 - targets)
    return alpha * bce * (1 - p_true) ** 2


def _dice_loss(probs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Soft dice loss inside the valid region, ``(m, k)``."""
    intersection = (probs * targets * valid).sum(dim=(-2, -1))
    total = ((probs + targets) * valid).sum(dim=(-2, -1))
    return 1 - (2 * intersection + 1) / (total + 1)


def thresholded_iou(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """IoU ``(m, k)`` of the masks ``logits > 0`` (inside ``valid``) with ``targets``; 1 when both are empty.

    Parameters
    ----------
    logits
        ``(m, k, H, W)`` mask logits.
    targets
        ``(m, 1, H, W)`` float 0/1 object masks.
    valid
        ``(m, 1, H, W)`` float 0/1: the image inside the padded input; predicted
        pixels outside it do not count.

    Returns
    -------
    torch.Tensor
        ``(m, k)`` float32, computed without gradient.
    """
    import torch

    with torch.no_grad():
        hard = (logits > 0) & (valid > 0)
        target_bool = targets > 0
        inter = (hard & target_bool).sum(dim=(-2, -1)).float()
        union = (hard | target_bool).sum(dim=(-2, -1)).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    kind: str = "focal_dice",
    focal_weight: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask loss and actual IoU.

    Parameters
    ----------
    logits
        ``(m, k, H, W)`` mask logits (``k`` outputs per object).
    targets
        ``(m, 1, H, W)`` float 0/1 object masks.
    valid
        ``(m, 1, H, W)`` float 0/1: the image inside the padded input.
    kind
        ``"focal_dice"`` or ``"bce_dice"``.
    focal_weight
        Weight of the focal (or BCE) term against dice.

    Returns
    -------
    tuple of torch.Tensor
        Loss ``(m, k)`` = ``focal_weight * (focal or BCE) + dice`` and the IoU ``(m, k)``
        of the thresholded masks (no gradient).
    """
    import torch

    logits = logits.float()
    probs = torch.sigmoid(logits)
    pixel_term = _masked_mean(_pixel_loss(logits, probs, targets, kind), valid)
    dice = _dice_loss(probs, targets, valid)
    return focal_weight * pixel_term + dice, thresholded_iou(logits, targets, valid)


__all__ = ["mask_losses", "thresholded_iou"]
