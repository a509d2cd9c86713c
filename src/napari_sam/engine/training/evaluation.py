"""Measuring a model on labelled images the way a user prompts it, through the public ``Predictor``.

One measurement serves both the validation during fine-tuning and the quality tests:
for every object (optionally only the largest few per image), the mean IoU of the mask
SAM returns for

* ``box``: the object's tight box ``(min_row, min_col, max_row, max_col)``, single output;
* ``point``: one positive click at its most interior pixel (``object_centres``), three
  outputs, the highest-scoring one taken;
* ``point_box``: that click and the box, single output;

in the original pixel frame, so it is exactly what a user gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from napari_sam.engine.training.data import as_training_pairs
from napari_sam.engine.training.prompt_sampling import (
    object_boxes,
    object_centres,
    object_sizes,
)

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.predict.predictor import Predictor

PROMPTED_KINDS = ("box", "point", "point_box")


def _measured_ids(labels: np.ndarray, min_object_size: int, objects_per_image: int | None) -> np.ndarray:
    """Ids of the objects to measure: at least ``min_object_size`` pixels, the largest ``objects_per_image``."""
    ids, counts = object_sizes(labels)
    keep = counts >= min_object_size
    ids, counts = ids[keep], counts[keep]
    if objects_per_image is not None and ids.size > objects_per_image:
        ids = ids[np.argsort(counts, kind="stable")[::-1][:objects_per_image]]
    return np.sort(ids)


def _image_ious(predictor: Predictor, image: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> dict[str, list]:
    """IoU of each object of one image for each prompt kind (the image is embedded once)."""
    from napari_sam.engine.metrics import mask_iou

    # measured objects only: boxes and centres of other ids are never needed
    measured = np.where(np.isin(labels, ids), labels, 0)
    boxes_by_id, centres_by_id = object_boxes(measured), object_centres(measured)
    predictor.set_image(image)
    boxes = np.stack([boxes_by_id[int(i)] for i in ids])
    points = np.stack([centres_by_id[int(i)] for i in ids])[:, None]
    point_labels = np.ones(points.shape[:2], dtype=np.int64)
    box_masks, _, _ = predictor.predict_batch(boxes=boxes, multimask=False)
    point_masks, point_scores, _ = predictor.predict_batch(points=points, labels=point_labels, multimask=True)
    both_masks, _, _ = predictor.predict_batch(points=points, labels=point_labels, boxes=boxes, multimask=False)
    best = point_scores.argmax(axis=1)
    ious: dict[str, list] = {kind: [] for kind in PROMPTED_KINDS}
    for row, object_id in enumerate(ids):
        target = labels == object_id
        ious["box"].append(mask_iou(box_masks[row, 0], target))
        ious["point"].append(mask_iou(point_masks[row, best[row]], target))
        ious["point_box"].append(mask_iou(both_masks[row, 0], target))
    return ious


def evaluate_with_predictor(
    model: torch.nn.Module,
    data: Sequence,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    min_object_size: int = 1,
    objects_per_image: int | None = None,
) -> dict[str, float]:
    """Mean IoU of one-prompt segmentations through the public ``Predictor`` (original pixel frame).

    Parameters
    ----------
    model
        The SAM model (left in eval mode).
    data
        Sequence of ``(image, labels)`` pairs (see ``as_training_pairs``).
    device
        Where to run; None: where the model is.
    precision
        The Predictor's precision (``fp32``, ``bf16``, ``fp16``, ``auto``).
    min_object_size
        Objects with fewer pixels (original frame) are not measured.
    objects_per_image
        Measure only this many of each image's largest objects (None: all).

    Returns
    -------
    dict
        Mean IoU for ``box``, ``point`` and ``point_box`` (NaN without objects), their
        ``mean``, and ``objects``, the number of objects measured.

    Raises
    ------
    InputError
        ``data`` is None, a path or empty, a pair is not valid, or the device or
        precision is not available.
    """
    import torch

    from napari_sam.engine.predict.predictor import Predictor

    pairs = as_training_pairs(data, "evaluation data")
    device = device if device is not None else next(model.parameters()).device
    predictor = Predictor(model, device=device, precision=precision)
    ious: dict[str, list] = {kind: [] for kind in PROMPTED_KINDS}
    with torch.no_grad():
        for index in range(len(pairs)):
            image, labels, _ = pairs[index]
            ids = _measured_ids(labels, min_object_size, objects_per_image)
            if ids.size:
                for kind, values in _image_ious(predictor, image, labels, ids).items():
                    ious[kind].extend(values)
    result = {kind: float(np.mean(values)) if values else float("nan") for kind, values in ious.items()}
    result["mean"] = float(np.mean([result[kind] for kind in PROMPTED_KINDS]))
    result["objects"] = len(ious["box"])
    return result


def evaluate_prompted_iou(
    model: torch.nn.Module,
    data: Sequence,
    device: str | torch.device | None = None,
    objects_per_image: int | None = 20,
    min_object_size: int = 8,
    precision: str = "fp32",
) -> dict[str, float]:
    """The validation of a fine-tuning run: :func:`evaluate_with_predictor` on the largest objects.

    Parameters
    ----------
    model, data, device, precision
        As for :func:`evaluate_with_predictor`.
    objects_per_image
        Measure this many of each image's largest objects (None: all).
    min_object_size
        Objects with fewer pixels (original frame) are not measured.

    Returns
    -------
    dict
        Mean IoU for ``box``, ``point``, ``point_box`` and their ``mean``.

    Raises
    ------
    InputError
        As for :func:`evaluate_with_predictor`.
    """
    result = evaluate_with_predictor(model, data, device, precision, min_object_size, objects_per_image)
    result.pop("objects")
    return result


__all__ = ["PROMPTED_KINDS", "evaluate_prompted_iou", "evaluate_with_predictor"]
