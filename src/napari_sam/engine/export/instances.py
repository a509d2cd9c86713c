"""What every format module takes and gives: a 2D instance label image and a class per object.

``labels`` is ``(H, W)`` int, 0 the background; ``classes`` maps a label id to its class
name (``{3: "nucleus"}``). Objects missing from ``classes`` (or with an empty name) get
:data:`DEFAULT_CLASS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError

DEFAULT_CLASS = "object"
"""The class of an object that was given none."""


@dataclass
class InstanceAnnotation:
    """One image's annotation: instance labels and the class of each object."""

    labels: np.ndarray
    """``(H, W)`` int, 0 the background."""
    classes: dict[int, str] = field(default_factory=dict)
    """Label id -> class name, for every object in ``labels``."""
    file_name: str = ""
    """The image file it belongs to (as the format names it), '' when unknown."""


def check_labels(labels: npt.ArrayLike, what: str = "The labels") -> np.ndarray:
    """``labels`` as a 2D integer array with no negative ids, else a clear ``InputError``.

    Parameters
    ----------
    labels
        An instance label image (H, W).
    what
        How the message names it.

    Returns
    -------
    np.ndarray
        The same data as an (H, W) integer array.

    Raises
    ------
    InputError
        Not 2D, not integer (or bool), or negative ids.
    """
    array = np.asarray(labels)
    if array.ndim != 2:
        raise InputError(f"{what} must be one 2D image (H, W); got shape {array.shape}. Export stacks plane by plane.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what} must hold integer ids; got {array.dtype}.")
    if array.size and array.min() < 0:
        raise InputError(f"{what} hold negative ids; label ids are 0 (background) and above.")
    return array


def object_ids(labels: np.ndarray) -> np.ndarray:
    """The ids present in ``labels``, ascending, background excluded.

    Parameters
    ----------
    labels
        An instance label image.

    Returns
    -------
    np.ndarray
        int64 ids > 0.
    """
    ids = np.unique(labels)
    return ids[ids > 0].astype(np.int64)


def class_of(classes: Mapping[int, str] | None, label_id: int) -> str:
    """The class name of object ``label_id`` (:data:`DEFAULT_CLASS` when it has none).

    Parameters
    ----------
    classes
        Label id -> class name; None: no classes.
    label_id
        The object's id.

    Returns
    -------
    str
        Its class name.
    """
    name = (classes or {}).get(int(label_id), "")
    return str(name) if name not in (None, "") and name == name else DEFAULT_CLASS  # NaN from a table: none


def class_names_for(annotations: Iterable[InstanceAnnotation], names: Iterable[str] | None = None) -> list[str]:
    """The dataset's class list: ``names`` in their order, then any other class used, sorted.

    Parameters
    ----------
    annotations
        The images' annotations.
    names
        Classes in a fixed order (e.g. a detector's names); None: only the classes used.

    Returns
    -------
    list of str
        Unique class names; their position is the class index (YOLO) or id - 1 (COCO).
    """
    ordered = list(dict.fromkeys(str(n) for n in (names or ())))
    used = {class_of(a.classes, i) for a in annotations for i in object_ids(a.labels)}
    return ordered + sorted(used - set(ordered))


def painted_annotation(
    shape: tuple[int, int], masks: Iterable[tuple[int, np.ndarray]], classes: Mapping[int, str], file_name: str = ""
) -> InstanceAnnotation:
    """An annotation of ``shape`` with each ``(id, mask)`` painted where it is still background.

    Where objects overlap (possible in COCO and YOLO files), the first one keeps the pixels;
    an object left with no pixels loses its class too.

    Parameters
    ----------
    shape
        (H, W).
    masks
        ``(label id, (H, W) bool mask)`` pairs, in order.
    classes
        Label id -> class name of the objects.
    file_name
        The image file it belongs to.

    Returns
    -------
    InstanceAnnotation
        uint32 (H, W) labels and the classes of the objects in them.
    """
    labels = np.zeros(shape, dtype=np.uint32)
    for label_id, mask in masks:
        labels[np.asarray(mask, dtype=bool) & (labels == 0)] = label_id
    present = set(object_ids(labels).tolist())
    return InstanceAnnotation(labels, {i: c for i, c in classes.items() if i in present}, file_name)
