"""COCO instance segmentation JSON out and in.

Written: ``images`` (id, file_name, height, width), ``annotations`` (id, image_id,
category_id, segmentation, area, bbox, iscrowd, and ``label_id``: the object's id in the
label image, which COCO readers ignore and :func:`read_coco` uses to give objects their
ids back), ``categories`` (id, name, supercategory). Ids count from 1; category ``k`` is
``class_names[k - 1]``.

``segmentation`` is COCO RLE by default: pycocotools' compressed RLE of the mask
(column-major), exact, holes and parts kept. ``segmentation="polygon"`` writes polygons
``[[x1, y1, x2, y2, ...], ...]`` instead, one per part; holes are lost (see
``polygons``). ``area`` is the object's pixel count and ``bbox`` ``[x, y, w, h]`` its
pixel extent (x = column of its left edge), both from the label image. Coordinates are
pixels in the frame where pixel (row, col) covers ``[col, col + 1) x [row, row + 1)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError
from napari_sam.engine.export.files import optional_module, write_text
from napari_sam.engine.export.instances import (
    InstanceAnnotation,
    check_labels,
    class_names_for,
    class_of,
    object_ids,
    painted_annotation,
)
from napari_sam.engine.export.polygons import DEFAULT_TOLERANCE, mask_to_polygons

SEGMENTATIONS = ("rle", "polygon")


def _mask_api():
    return optional_module("pycocotools.mask", "COCO RLE")


def encode_rle(mask: npt.ArrayLike) -> dict:
    """A mask as COCO's compressed RLE, ready for JSON.

    Parameters
    ----------
    mask
        (H, W) bool.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": str}`` (column-major runs, starting with background).
    """
    rle = _mask_api().encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a COCO ``segmentation``: polygons, RLE or compressed RLE.

    Parameters
    ----------
    segmentation
        ``[[x1, y1, ...], ...]``, ``{"size", "counts": [...]}`` or ``{"size", "counts": str}``.
    height, width
        The image's size.

    Returns
    -------
    np.ndarray
        (H, W) bool; polygons are drawn by pycocotools (their union).

    Raises
    ------
    InputError
        A segmentation of none of these forms, or of another size.
    """
    api = _mask_api()
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = api.merge(api.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", ())) != [height, width]:
            raise InputError(f"An RLE of size {segmentation.get('size')} on an image of size {[height, width]}.")
        counts = segmentation["counts"]
        rle = api.frPyObjects(segmentation, height, width) if isinstance(counts, list) else {
            "size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise InputError(f"Not a COCO segmentation (polygons or RLE): {str(segmentation)[:80]}")
    return api.decode(rle).astype(bool)


def bbox_of(mask: np.ndarray) -> list[float]:
    """COCO's ``[x, y, w, h]`` of a mask: left, top, width and height of its pixels.

    Parameters
    ----------
    mask
        (H, W) bool, not empty.

    Returns
    -------
    list of float
        ``[min_col, min_row, max_col - min_col + 1, max_row - min_row + 1]``.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def object_annotations(
    labels: npt.ArrayLike,
    classes: Mapping[int, str] | None,
    class_names: Sequence[str],
    image_id: int,
    first_id: int = 1,
    segmentation: str = "rle",
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[dict]:
    """The COCO ``annotations`` of one image's objects, in ascending label id.

    Parameters
    ----------
    labels
        (H, W) instance labels.
    classes
        Label id -> class name (missing: the default class).
    class_names
        The dataset's classes; category id = position + 1.
    image_id
        The ``images`` entry they belong to.
    first_id
        The first annotation id.
    segmentation
        "rle" (exact) or "polygon" (outlines, holes lost).
    tolerance
        Polygon simplification, pixels.

    Returns
    -------
    list of dict
        One annotation per object (objects whose polygons vanish are still written, with
        an empty polygon list).

    Raises
    ------
    InputError
        Bad labels, an unknown ``segmentation``, or a class missing from ``class_names``.
    """
    if segmentation not in SEGMENTATIONS:
        raise InputError(f"COCO segmentation must be one of {', '.join(SEGMENTATIONS)}; got {segmentation!r}.")
    labels = check_labels(labels)
    category = {name: k + 1 for k, name in enumerate(class_names)}
    annotations = []
    for offset, label_id in enumerate(object_ids(labels)):
        mask = labels == label_id
        name = class_of(classes, label_id)
        if name not in category:
            raise InputError(f"Object {label_id} has class {name!r}, which is not in the class list {list(class_names)}.")
        if segmentation == "rle":
            segm: Any = encode_rle(mask)
        else:
            segm = [[round(float(v), 2) for v in polygon.ravel()] for polygon in mask_to_polygons(mask, tolerance)]
        annotations.append({
            "id": first_id + offset,
            "image_id": int(image_id),
            "category_id": category[name],
            "segmentation": segm,
            "area": int(mask.sum()),
            "bbox": bbox_of(mask),
            "iscrowd": 0,
            "label_id": int(label_id),
        })
    return annotations


def coco_dataset(
    annotations: Sequence[InstanceAnnotation],
    class_names: Sequence[str] | None = None,
    segmentation: str = "rle",
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """A COCO instance segmentation dataset (a dict ready for ``json.dump``).

    Parameters
    ----------
    annotations
        One per image, with its ``file_name``.
    class_names
        Classes in the order their category ids take (any other class used is appended,
        sorted); None: the classes used, sorted.
    segmentation
        "rle" (default, exact) or "polygon".
    tolerance
        Polygon simplification, pixels.

    Returns
    -------
    dict
        ``{"images", "annotations", "categories"}``.

    Raises
    ------
    InputError
        Bad labels or an unknown ``segmentation``.
    """
    names = class_names_for(annotations, class_names)
    images, objects = [], []
    for image_id, annotation in enumerate(annotations, start=1):
        labels = check_labels(annotation.labels, f"The labels of {annotation.file_name or f'image {image_id}'}")
        height, width = labels.shape
        images.append({"id": image_id, "file_name": annotation.file_name, "height": height, "width": width})
        objects += object_annotations(
            labels, annotation.classes, names, image_id, len(objects) + 1, segmentation, tolerance
        )
    categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in enumerate(names)]
    return {"images": images, "annotations": objects, "categories": categories}


def save_coco(
    path: str | os.PathLike,
    annotations: Sequence[InstanceAnnotation],
    class_names: Sequence[str] | None = None,
    segmentation: str = "rle",
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> Path:
    """Write a COCO JSON file for ``annotations`` (see :func:`coco_dataset`), safely.

    Parameters
    ----------
    path
        The ``.json`` file.
    annotations
        One per image.
    class_names
        Class order (category ids); None: the classes used, sorted.
    segmentation
        "rle" or "polygon".
    tolerance
        Polygon simplification, pixels.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InputError
        Not a ``.json`` path, the file exists (without ``overwrite``), or bad labels.
    """
    if Path(path).suffix.lower() != ".json":
        raise InputError(f"A COCO file ends in .json; got {Path(path).name}.")
    dataset = coco_dataset(annotations, class_names, segmentation, tolerance)
    return write_text(path, json.dumps(dataset), overwrite=overwrite)


def read_coco(source: str | os.PathLike | Mapping) -> list[InstanceAnnotation]:
    """The images of a COCO file as instance labels and classes.

    Objects keep their ``label_id`` when the file has one (files written here), else are
    numbered 1, 2, ... in the file's order per image. Where objects overlap, the first
    keeps the pixels. Crowd annotations (``iscrowd`` 1) are objects like the others.

    Parameters
    ----------
    source
        A COCO JSON file, or its content as a dict.

    Returns
    -------
    list of InstanceAnnotation
        One per ``images`` entry, in file order, with ``file_name`` set.

    Raises
    ------
    InputError
        Not JSON, no ``images``/``annotations``, or an annotation of an unknown image.
    """
    data = _load(source)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}
    images = {int(image["id"]): image for image in data["images"]}
    per_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for annotation in data["annotations"]:
        image_id = int(annotation["image_id"])
        if image_id not in per_image:
            raise InputError(f"Annotation {annotation.get('id')} is of image {image_id}, which is not in 'images'.")
        per_image[image_id].append(annotation)
    result = []
    for image_id, image in images.items():
        height, width = int(image["height"]), int(image["width"])
        objects, classes = [], {}
        for order, annotation in enumerate(per_image[image_id], start=1):
            label_id = int(annotation.get("label_id", order))
            mask = decode_segmentation(annotation["segmentation"], height, width)
            objects.append((label_id, mask))
            classes[label_id] = names.get(int(annotation.get("category_id", 0)), "")
        result.append(painted_annotation((height, width), objects, classes, str(image.get("file_name", ""))))
    return result


def _load(source: str | os.PathLike | Mapping) -> dict:
    if isinstance(source, Mapping):
        data = dict(source)
        where = "The COCO data"
    else:
        where = f"The COCO file {source}"
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"No such COCO file: {source}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{where} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise InputError(f"{where} has no 'images' and 'annotations': not a COCO instance file.")
    return data


def looks_like_coco(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON file with COCO's ``images`` and ``annotations`` (read cheaply).

    Parameters
    ----------
    path
        Any path.

    Returns
    -------
    bool
        True for a COCO instance file.
    """
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        head = path.read_text(encoding="utf-8", errors="ignore")[:100_000]
    except OSError:
        return False
    return '"images"' in head and '"annotations"' in head
