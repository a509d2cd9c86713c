"""Prompts sampled from instance labels, for training and for measuring a model.

Two frames are used, and every function says which:

* napari's pixel frame (row, col), for helpers that describe objects of a label
  image (``object_boxes``, ``object_centres``): what a user would click or draw.
* SAM's INPUT frame (x, y) in pixels of the resized, padded ``S x S`` model input,
  for the training samplers, which work on target masks already in that frame.
  Pixel index ``(row, col)`` of the input frame is the point ``(x=col, y=row)``
  (the prompt encoder adds the half-pixel shift itself), as the ``Predictor`` does.

The training samplers follow SAM's interactive training recipe: random positive
points inside the object, negatives just outside it, the bounding box with jitter,
then correction points drawn from the error of the previous prediction (a positive
point where the object was missed, a negative one where the mask spilled over).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.model.config import NEGATIVE, PADDING, POSITIVE

if TYPE_CHECKING:
    import torch

# point labels of SAM's prompt encoder


# ------------------------------------------------------------------ pixel-frame helpers (numpy)


def object_ids(labels: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Ids of the objects in an instance label image with at least ``min_size`` pixels (sorted)."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64))
    ids = np.nonzero(counts >= min_size)[0]
    return ids[ids != 0]


def object_boxes(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Tight box of every object: ``{id: (min_row, min_col, max_row, max_col)}`` (inclusive), pixel frame."""
    from skimage.measure import regionprops

    boxes = {}
    for region in regionprops(np.asarray(labels).astype(np.int32, copy=False)):
        r0, c0, r1, c1 = region.bbox  # half-open
        boxes[int(region.label)] = np.array([r0, c0, r1 - 1, c1 - 1], dtype=np.float64)
    return boxes


def object_centres(labels: np.ndarray) -> dict[int, np.ndarray]:
    """The most interior pixel of every object: ``{id: (row, col)}``, pixel frame.

    "Centre" is the pixel farthest from the object's border (maximum of the distance
    transform), which lies inside the object even when the centroid of a curved blob
    does not; it is where a person would click.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import regionprops

    centres = {}
    labels = np.asarray(labels).astype(np.int32, copy=False)
    for region in regionprops(labels):
        r0, c0 = region.bbox[:2]
        # pad by one so the distance counts the window edge as outside
        inside = np.pad(region.image, 1)
        distance = distance_transform_edt(inside)
        row, col = np.unravel_index(np.argmax(distance), distance.shape)
        centres[int(region.label)] = np.array([r0 + row - 1, c0 + col - 1], dtype=np.float64)
    return centres


# ------------------------------------------------------------------ input-frame samplers (torch)


def _pixel_indices_to_xy(flat_index: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices ``(...)`` of an ``(H, W)`` grid -> ``(..., 2)`` float (x, y)."""
    import torch

    rows = torch.div(flat_index, width, rounding_mode="floor")
    cols = flat_index - rows * width
    return torch.stack([cols, rows], dim=-1).float()


def sample_points_in(
    regions: torch.Tensor, count: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random pixels inside each region, input frame.

    ``regions``: ``(M, H, W)`` bool. Returns coords ``(M, count, 2)`` (x, y) and a
    ``(M,)`` bool telling which regions were non-empty (empty regions get (0, 0)).
    Sampling is with replacement, uniform over each region's pixels.
    """
    import torch

    m, h, w = regions.shape
    weights = regions.reshape(m, h * w).float()
    has_pixels = weights.sum(dim=1) > 0
    # an empty region would make multinomial fail: give it a dummy uniform weight
    weights = torch.where(has_pixels[:, None], weights, torch.ones_like(weights))
    index = torch.multinomial(weights, count, replacement=True, generator=generator)
    coords = _pixel_indices_to_xy(index, w)
    coords = torch.where(has_pixels[:, None, None], coords, torch.zeros_like(coords))
    return coords, has_pixels


def box_prompts_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of ``(M, H, W)`` bool masks as ``(M, 4)`` float x0, y0, x1, y1 (inclusive pixel indices).

    Empty masks give the box (0, 0, 0, 0).
    """
    import torch

    m, h, w = masks.shape
    any_in_row = masks.any(dim=2)  # (M, H)
    any_in_col = masks.any(dim=1)  # (M, W)
    rows = torch.arange(h, device=masks.device)
    cols = torch.arange(w, device=masks.device)
    big = max(h, w)
    y0 = torch.where(any_in_row, rows, big).amin(dim=1)
    y1 = torch.where(any_in_row, rows, -1).amax(dim=1)
    x0 = torch.where(any_in_col, cols, big).amin(dim=1)
    x1 = torch.where(any_in_col, cols, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~masks.reshape(m, -1).any(dim=1)
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def jitter_boxes(
    boxes: torch.Tensor,
    valid_size: tuple[int, int],
    jitter: float = 0.1,
    max_shift: float = 20.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Move every box edge by Gaussian noise, input frame: a hand-drawn box is never tight.

    Each edge moves by ``N(0, jitter * side)`` pixels, at most ``max_shift``, as in
    SAM's training. ``valid_size`` is the (h, w) of the image inside the padded input;
    boxes stay inside it and keep ``x0 <= x1``, ``y0 <= y1``.
    """
    import torch

    width = (boxes[:, 2] - boxes[:, 0] + 1).clamp(min=1)
    height = (boxes[:, 3] - boxes[:, 1] + 1).clamp(min=1)
    scale = torch.stack([width, height, width, height], dim=1) * jitter
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * scale
    jittered = boxes + noise.clamp(-max_shift, max_shift)
    h, w = valid_size
    x0 = jittered[:, 0].clamp(0, w - 1)
    y0 = jittered[:, 1].clamp(0, h - 1)
    x1 = torch.maximum(jittered[:, 2].clamp(0, w - 1), x0)
    y1 = torch.maximum(jittered[:, 3].clamp(0, h - 1), y0)
    return torch.stack([x0, y0, x1, y1], dim=1)


def sample_negative_points(
    targets: torch.Tensor,
    count: int,
    margin: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` points just outside each object, input frame.

    Negatives are drawn from the object's box grown by ``margin`` of its size on each
    side, minus the object itself (where a user would click to cut a neighbour off).
    ``targets``: ``(M, H, W)`` bool. Returns coords ``(M, count, 2)`` and ``(M,)`` bool
    telling which objects had such pixels.
    """
    import torch

    _, h, w = targets.shape
    boxes = box_prompts_from_masks(targets)
    grow_x = (boxes[:, 2] - boxes[:, 0] + 1) * margin
    grow_y = (boxes[:, 3] - boxes[:, 1] + 1) * margin
    cols = torch.arange(w, device=targets.device)[None, None, :]
    rows = torch.arange(h, device=targets.device)[None, :, None]
    near = (
        (cols >= (boxes[:, 0] - grow_x)[:, None, None])
        & (cols <= (boxes[:, 2] + grow_x)[:, None, None])
        & (rows >= (boxes[:, 1] - grow_y)[:, None, None])
        & (rows <= (boxes[:, 3] + grow_y)[:, None, None])
    )
    return sample_points_in(near & ~targets, count, generator)


def sample_correction_points(
    predictions: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per object where the prediction is wrong, input frame.

    ``predictions``, ``targets``: ``(M, H, W)`` bool. A pixel is drawn uniformly from
    the error region; it is a positive point if the object was missed there (false
    negative), a negative point if the mask spilled over (false positive). Objects
    predicted perfectly get a padding point (label -1). Returns coords ``(M, 1, 2)``
    and labels ``(M, 1)`` (long).
    """
    import torch

    errors = predictions ^ targets
    coords, has_error = sample_points_in(errors, 1, generator)
    m = targets.shape[0]
    x = coords[:, 0, 0].long()
    y = coords[:, 0, 1].long()
    missed = targets[torch.arange(m, device=targets.device), y, x]
    labels = torch.where(missed, POSITIVE, NEGATIVE)
    labels = torch.where(has_error, labels, PADDING).long()
    return coords, labels[:, None]


def validate_instance_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Check that ``labels`` is an integer instance label image; return it as int64 numpy.

    Float or boolean labels are refused: instance ids must be integers (a float image
    is usually an intensity image passed by mistake; a boolean mask has no instances).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        raise InputError(
            f"{name} has float dtype {labels.dtype}; instance labels must be integers "
            "(0 = background, 1..N = objects). Is this an intensity image instead of a label image?"
        )
    if labels.dtype.kind == "b":
        raise InputError(
            f"{name} is a boolean mask; fine-tuning needs instance labels (0 = background, 1..N = objects). "
            "Label connected components first, e.g. skimage.measure.label(mask)."
        )
    if labels.dtype.kind not in "iu":
        raise InputError(f"{name} has dtype {labels.dtype}; instance labels must be integers.")
    if labels.size and labels.min() < 0:
        raise InputError(f"{name} contains negative values; instance labels must be >= 0.")
    return labels.astype(np.int64, copy=False)
