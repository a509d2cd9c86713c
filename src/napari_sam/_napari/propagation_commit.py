"""Writing a propagated object into the labels layer (no Qt): which pixels change, and the prompts to clear.

:meth:`~.propagation.PropagationController.commit` holds the state (the stack shown, the id,
the undo step); these functions work on what it passes: planes of the labels layer in its
data frame, each with the object's (rows, cols) mask on it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from napari_sam._napari.planes import Plane
from napari_sam.engine import labels as label_ops


def pixels_to_write(
    labels, masks: Iterable[tuple[Plane, np.ndarray]], label_id: int, paint_over: bool, replacing: bool
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The nD index and values that write object ``label_id``, plane by plane (only pixels that change).

    Parameters
    ----------
    labels
        The Labels layer (read, not written).
    masks
        ``(plane, (rows, cols) bool mask)`` pairs: the object on each plane of the layer.
    label_id
        The id written.
    paint_over
        Write over other objects too (else only over background).
    replacing
        Re-segment: ``label_id``'s old pixels on these planes become background where the mask is not.

    Returns
    -------
    index, values
        One array per layer axis, and the values to write there.
    """
    parts, values = [], []
    for plane, mask in masks:
        existing = np.asarray(labels.data[plane.selector(labels.ndim)])
        if replacing:
            rows, cols, vals = label_ops.resegment_pixels(existing, mask, label_id, paint_over)
        else:
            rows, cols, vals = label_ops.commit_pixels(existing, [mask], label_id, paint_over)
        if len(rows):
            parts.append(plane.full_index(rows, cols, labels.ndim))
            values.append(vals)
    if not parts:
        return tuple(np.zeros(0, dtype=np.intp) for _ in range(labels.ndim)), np.zeros(0, dtype=np.int64)
    index = tuple(np.concatenate([part[a] for part in parts]) for a in range(labels.ndim))
    return index, np.concatenate(values)


def clear_prompts(annotator, prompt_planes: set[Plane]) -> None:
    """Remove the points and boxes of ``prompt_planes`` (where a propagation was seeded and corrected).

    Parameters
    ----------
    annotator
        The :class:`~.controller.AnnotatorController` (its points and boxes layers).
    prompt_planes
        Planes in the image's data frame.
    """
    from napari_sam.engine.predict import prompts as prompt_ops

    for layer in (annotator.points_layer, annotator.boxes_layer):
        if layer is None or len(layer.data) == 0:
            continue
        remove = set()
        for plane in prompt_planes:
            if layer is annotator.points_layer:
                on = prompt_ops.on_plane(layer.data, plane.axes, plane.index_map)
            else:
                on = np.array([prompt_ops.on_plane(v, plane.axes, plane.index_map).all() for v in layer.data])
            remove.update(np.flatnonzero(on).tolist())
        if remove:
            layer.remove(sorted(remove))
