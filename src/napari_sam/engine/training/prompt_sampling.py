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
``first_prompts`` draws a whole step's first prompts (a :class:`PromptSet`) with the
mix of prompt kinds set in ``FinetuneOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.training.options import PROMPT_KINDS
from napari_sam.model.config import NEGATIVE, PADDING, POSITIVE

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.training.options import FinetuneOptions

# Most positive and negative points of a first prompt of kind "points".
MAX_POSITIVE, MAX_NEGATIVE = 3, 2

# ------------------------------------------------------------------ pixel-frame helpers (numpy)


def object_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids (sorted, 0 excluded) and pixel counts of the objects of an instance label image.

    Counts only the ids present (``np.unique``), so ids near 1e9 cost no memory
    (a ``bincount`` would allocate one counter per possible id).

    Parameters
    ----------
    labels
        Instance label image of any shape, 0 the background.

    Returns
    -------
    ids : np.ndarray
        (N,) int64, sorted.
    counts : np.ndarray
        (N,) pixels of each.
    """
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.int64), counts[keep]


def object_ids(labels: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Ids of the objects in an instance label image with at least ``min_size`` pixels (sorted).

    Parameters
    ----------
    labels
        Instance label image of any shape, 0 the background.
    min_size
        Fewest pixels an object needs.

    Returns
    -------
    np.ndarray
        (K,) int64 ids.
    """
    ids, counts = object_sizes(labels)
    return ids[counts >= min_size]


def object_boxes(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Tight box of every object: ``{id: (min_row, min_col, max_row, max_col)}`` (inclusive), pixel frame.

    Parameters
    ----------
    labels
        (H, W) instance label image, 0 the background (cast to int32 for scikit-image).

    Returns
    -------
    dict of int to np.ndarray
        (4,) float64 box per object id.
    """
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

    Parameters
    ----------
    labels
        (H, W) instance label image, 0 the background (cast to int32 for scikit-image).

    Returns
    -------
    dict of int to np.ndarray
        (2,) float64 (row, col) per object id.
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

    Sampling is with replacement, uniform over each region's pixels.

    Parameters
    ----------
    regions
        ``(M, H, W)`` bool.
    count
        Points per region.
    generator
        The torch random source; None: torch's global one.

    Returns
    -------
    coords : torch.Tensor
        ``(M, count, 2)`` float (x, y) pixel indices; (0, 0) for empty regions.
    has_pixels : torch.Tensor
        ``(M,)`` bool, which regions were non-empty.
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

    Parameters
    ----------
    masks
        ``(M, H, W)`` bool, input frame.

    Returns
    -------
    torch.Tensor
        ``(M, 4)`` float32 (x0, y0, x1, y1).
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

    Parameters
    ----------
    boxes
        ``(M, 4)`` float (x0, y0, x1, y1), inclusive pixel indices.
    valid_size
        (h, w) the boxes are clipped to.
    jitter
        Noise standard deviation as a fraction of the box's side.
    max_shift
        Largest move of an edge, in pixels.
    generator
        The torch random source; None: torch's global one.

    Returns
    -------
    torch.Tensor
        ``(M, 4)`` float jittered boxes.
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

    Parameters
    ----------
    targets
        ``(M, H, W)`` bool object masks.
    count
        Points per object.
    margin
        Growth of the box on each side, as a fraction of its width (height).
    generator
        The torch random source; None: torch's global one.

    Returns
    -------
    coords : torch.Tensor
        ``(M, count, 2)`` float (x, y); (0, 0) where there was no such pixel.
    has_pixels : torch.Tensor
        ``(M,)`` bool, which objects had such pixels.
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

    A pixel is drawn uniformly from the error region; it is a positive point if the
    object was missed there (false negative), a negative point if the mask spilled
    over (false positive). Objects predicted perfectly get a padding point (label -1).

    Parameters
    ----------
    predictions, targets
        ``(M, H, W)`` bool predicted and true masks.
    generator
        The torch random source; None: torch's global one.

    Returns
    -------
    coords : torch.Tensor
        ``(M, 1, 2)`` float (x, y).
    labels : torch.Tensor
        ``(M, 1)`` long: ``POSITIVE``, ``NEGATIVE`` or ``PADDING``.
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

    Parameters
    ----------
    labels
        Instance label image of any shape.
    name
        How the messages call it (e.g. a file name).

    Returns
    -------
    np.ndarray
        ``labels`` as int64 (not copied when it is already int64).

    Raises
    ------
    InputError
        The dtype is float, bool or not an integer, or a value is negative.
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


# ------------------------------------------------------------------ a training step's first prompts (torch)


@dataclass
class PromptSet:
    """Prompt sets of the M objects of one training step, input frame.

    coords ``(M, N, 2)`` (x, y), labels ``(M, N)`` (-1 padding), boxes ``(M, 4)``,
    has_box ``(M,)`` bool, multimask ``(M,)`` bool (train the three ambiguity-aware outputs).
    """

    coords: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    has_box: torch.Tensor
    multimask: torch.Tensor

    def add_points(self, coords: torch.Tensor, labels: torch.Tensor) -> None:
        """Append points ``(M, n, 2)`` with labels ``(M, n)`` to every prompt set (corrections).

        Parameters
        ----------
        coords
            ``(M, n, 2)`` float (x, y), input frame.
        labels
            ``(M, n)`` long point labels.
        """
        import torch

        self.coords = torch.cat([self.coords, coords], dim=1)
        self.labels = torch.cat([self.labels, labels], dim=1)


def _interior(targets: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Pixels at least ``width`` pixels inside each ``(M, H, W)`` mask (a cheap erosion)."""
    import torch.nn.functional as F

    outside = (~targets).float()[:, None]
    grown = F.max_pool2d(outside, kernel_size=2 * width + 1, stride=1, padding=width)
    return (grown[:, 0] == 0) & targets


def _candidate_points(
    targets: torch.Tensor, rng: np.random.Generator, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``MAX_POSITIVE`` positives and ``MAX_NEGATIVE`` negatives per object, and which objects have negatives."""
    import torch

    # Users click inside objects, mostly away from the border: half the points come from the interior.
    interior = _interior(targets)
    use_interior = torch.as_tensor(rng.random(targets.shape[0]) < 0.5, device=targets.device)
    use_interior &= interior.flatten(1).any(dim=1)
    point_regions = torch.where(use_interior[:, None, None], interior, targets)
    positives, _ = sample_points_in(point_regions, MAX_POSITIVE, generator)
    negatives, has_negative_pixels = sample_negative_points(targets, MAX_NEGATIVE, generator=generator)
    return positives, negatives, has_negative_pixels


def _point_labels(kinds: np.ndarray, has_negative: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(M, MAX_POSITIVE + MAX_NEGATIVE)`` labels: how many candidate points each kind of prompt uses."""
    n_positive = np.where(kinds == PROMPT_KINDS.index("box"), 0, 1)
    several = kinds == PROMPT_KINDS.index("points")
    n_positive[several] = rng.integers(1, MAX_POSITIVE + 1, several.sum())
    n_negative = np.zeros(len(kinds), dtype=int)
    n_negative[several] = rng.integers(0, MAX_NEGATIVE + 1, several.sum())
    n_negative[~has_negative] = 0
    positive = np.where(np.arange(MAX_POSITIVE)[None, :] < n_positive[:, None], POSITIVE, PADDING)
    negative = np.where(np.arange(MAX_NEGATIVE)[None, :] < n_negative[:, None], NEGATIVE, PADDING)
    return np.concatenate([positive, negative], axis=1)


def first_prompts(
    targets: torch.Tensor,
    valid_sizes: list[tuple[int, int]],
    options: FinetuneOptions,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> PromptSet:
    """Draw each object's first prompt: a box, one point, point + box, or several points.

    Parameters
    ----------
    targets
        ``(M, S, S)`` bool object masks, input frame.
    valid_sizes
        ``(h, w)`` of the image inside the padded input, one per object.
    options
        Mix of prompt kinds (``prompt_probabilities``), box jitter, multimask probability.
    rng, generator
        Random sources (numpy for choices, torch for pixels), so a step is reproducible.

    Returns
    -------
    PromptSet
        Prompts of all M objects, with all-padding point columns dropped.
    """
    import torch

    m, device = targets.shape[0], targets.device
    probabilities = np.asarray(options.prompt_probabilities, dtype=np.float64)
    kinds = rng.choice(len(PROMPT_KINDS), size=m, p=probabilities / probabilities.sum())
    positives, negatives, has_negative = _candidate_points(targets, rng, generator)
    labels = torch.as_tensor(_point_labels(kinds, has_negative.cpu().numpy(), rng), device=device)
    coords = torch.cat([positives, negatives], dim=1)
    # drop all-padding columns so prompts carry as few padding tokens as possible
    keep = (labels != PADDING).any(dim=0)
    coords, labels = coords[:, keep], labels[:, keep]

    valid_hw = torch.as_tensor(valid_sizes, dtype=torch.float32)
    boxes = jitter_boxes(box_prompts_from_masks(targets), (int(valid_hw[:, 0].max()), int(valid_hw[:, 1].max())),
                         options.box_jitter, generator=generator)
    with_box = np.isin(kinds, [PROMPT_KINDS.index("box"), PROMPT_KINDS.index("point_box")])
    single_point = kinds == PROMPT_KINDS.index("point")
    multimask = single_point & (rng.random(m) < options.multimask_probability)
    return PromptSet(coords, labels.long(), boxes, torch.as_tensor(with_box, device=device),
                     torch.as_tensor(multimask, device=device))
