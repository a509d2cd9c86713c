"""Training targets and loss of the instance segmentation decoder (micro-sam's three maps).

The decoder predicts, per pixel, three maps in [0, 1] (channel order as micro-sam /
torch-em define them, see ``napari_sam.model.decoders``):

0. foreground: 1 inside any object, 0 on the background;
1. distance to the object's centre, normalised per object: 0 at the centre, 1 at the
   object's farthest pixel;
2. distance to the object's boundary, inverted and normalised per object: 0 at the
   object's most interior pixel, 1 on its boundary.

Both distance maps are 1 on the background. The centre is the object's centroid, or,
when the centroid lies outside the object (a crescent), its most interior pixel.

The loss is a dice loss per channel (squared terms in the denominator), the distance
channels counted only inside objects, summed over the three channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.training.data import PreparedSample

_EPS = 1e-7


def _object_distances(
    mask: np.ndarray, boundary: np.ndarray, rows: np.ndarray, cols: np.ndarray, origin: tuple[int, int]
) -> tuple:
    """Centre and boundary distance of one object's pixels, each normalised to a maximum of 1.

    ``mask``/``boundary``: the object and its inner boundary in the object's bounding box;
    ``rows``/``cols``: coordinates of the object's pixels in that box, whose top left is at
    ``origin`` in the image.
    """
    from scipy.ndimage import distance_transform_edt

    not_boundary = ~boundary
    if not_boundary.all():  # no boundary pixel in the box (cannot happen for a labelled object): flat maps
        depth = np.zeros(mask.shape)
    else:
        depth = distance_transform_edt(not_boundary)
    depth = np.where(mask, depth, 0.0)
    # the centroid in image coordinates from exact integer sums, rounded half to even there (a .5 tie
    # rounds differently in the box's frame), then moved into the box
    sums = np.array([int(rows.sum()) + origin[0] * rows.size, int(cols.sum()) + origin[1] * cols.size])
    centre = np.round(sums / rows.size).astype(int) - np.asarray(origin)
    if not mask[centre[0], centre[1]]:  # the centroid lies outside (e.g. a crescent): take the deepest pixel
        centre = np.array(np.unravel_index(np.argmax(depth), depth.shape))
    to_centre = np.hypot(rows - centre[0], cols - centre[1])
    deepest = depth.max()
    to_boundary = deepest - depth[rows, cols]
    return to_centre / (to_centre.max() + _EPS), to_boundary / (np.abs(to_boundary).max() + _EPS)


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """The decoder's three target maps of an instance label image.

    Parameters
    ----------
    labels
        ``(H, W)`` integer instance labels (0 background), in the frame the decoder's
        output is compared in (the model's input frame during training).

    Returns
    -------
    np.ndarray
        ``(3, H, W)`` float32: foreground, normalised distance to the object centre and
        inverted normalised distance to the object boundary (see the module docstring).
    """
    from scipy.ndimage import find_objects
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    targets = np.ones((3,) + labels.shape, dtype=np.float32)
    targets[0] = labels > 0
    if not labels.any():
        return targets
    boundaries = find_boundaries(labels, mode="inner")
    if labels.min() < 0:
        labels = np.where(labels < 0, 0, labels)
    for object_id, box in enumerate(find_objects(labels.astype(np.int64, copy=False)), start=1):
        if box is None:
            continue
        mask = labels[box] == object_id
        rows, cols = np.nonzero(mask)
        origin = (box[0].start, box[1].start)
        to_centre, to_boundary = _object_distances(mask, boundaries[box] & mask, rows, cols, origin)
        targets[1][rows + origin[0], cols + origin[1]] = to_centre
        targets[2][rows + origin[0], cols + origin[1]] = to_boundary
    return targets


def _dice_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - dice with squared terms in the denominator, over all pixels of the batch."""
    numerator = (prediction * target).sum()
    denominator = (prediction * prediction).sum() + (target * target).sum()
    return 1 - 2 * numerator / denominator.clamp(min=_EPS)


def instance_decoder_loss(prediction: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice loss of the decoder's maps against :func:`instance_targets`.

    Parameters
    ----------
    prediction
        ``(B, 3, H, W)`` decoder output in [0, 1] (after its sigmoid).
    targets
        ``(B, 3, H, W)`` targets of the same images, same frame.

    Returns
    -------
    loss : torch.Tensor
        Scalar: foreground dice loss plus the two distance channels' dice losses, those
        counted inside objects only (the targets' foreground).
    per_channel : torch.Tensor
        ``(3,)`` the three terms, detached.
    """
    import torch

    prediction = prediction.float()
    foreground = targets[:, 0:1]
    terms = [_dice_loss(prediction[:, 0:1], foreground)]
    for channel in (1, 2):
        terms.append(_dice_loss(prediction[:, channel:channel + 1] * foreground,
                                targets[:, channel:channel + 1] * foreground))
    stacked = torch.stack(terms)
    return stacked.sum(), stacked.detach()


def samples_decoder_loss(
    decoder: torch.nn.Module, embeddings: torch.Tensor, samples: list[PreparedSample], img_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The instance decoder's loss on a step's image embeddings (the same ones SAM's decoder reads).

    The decoder's output is resized to the model input (``S x S``, as the decoder's ``maps``
    does before cropping) and compared with the targets of the samples' input-frame labels;
    the padding is background there.

    Parameters
    ----------
    decoder
        The model's ``instance_decoder``.
    embeddings
        ``(B, C, E, E)`` image embeddings of ``samples``, in their order.
    samples
        The step's prepared images (labels ``(S, S)`` in the input frame).
    img_size
        S, the model's input size.

    Returns
    -------
    loss : torch.Tensor
        Scalar (with gradient), see :func:`instance_decoder_loss`.
    per_channel : torch.Tensor
        ``(3,)`` foreground, centre-distance and boundary-distance terms, detached.
    """
    import torch
    import torch.nn.functional as F

    maps = decoder(embeddings)
    if maps.shape[-2:] != (img_size, img_size):
        maps = F.interpolate(maps.float(), size=(img_size, img_size), mode="bilinear", align_corners=False)
    targets = torch.stack([torch.from_numpy(instance_targets(s.labels.cpu().numpy())) for s in samples])
    return instance_decoder_loss(maps, targets.to(maps.device))


__all__ = ["instance_decoder_loss", "instance_targets", "samples_decoder_loss"]
