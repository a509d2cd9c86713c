"""npe2 readers and writers for annotation datasets: COCO JSON and YOLO-seg.

Writers (File > Save Layers... on one Labels layer): a ``.json`` path writes COCO instance
JSON (RLE masks), a ``.txt`` path writes YOLO-seg (and ``data.yaml`` with the class names
beside it, unless one is there already with the same names). The class of each object comes
from the layer's ``features`` (columns ``index`` and ``class``, as the annotator keeps them)
or the annotator's object records in ``metadata``; objects without one are "object".

Readers: a COCO JSON file, or a YOLO dataset folder (or its ``data.yaml``), opens as each
image (when its file is found) with its labels over it; the labels carry ``features``
(``index``, ``class``) and the annotator's object records, so the annotator's object list
shows the classes and exporting again keeps them.

The conversions themselves are in ``napari_sam.engine.export``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError

OBJECTS_METADATA = "napari_sam_objects"  # AnnotatorController.OBJECTS_METADATA (checked by a test)
IMAGE_FILE_METADATA = "napari_sam_image_file"  # labels.metadata: the image file the labels belong to


def layer_classes(meta: dict) -> dict[int, str]:
    """{label id: class} of a layer, from its ``features`` (``index``, ``class``) or object records.

    Parameters
    ----------
    meta
        The layer's attributes as napari passes them to writers (``features``, ``metadata``).

    Returns
    -------
    dict
        Classes by id; ids without a (non-empty) class are left out.
    """
    classes: dict[int, str] = {}
    records = (meta.get("metadata") or {}).get(OBJECTS_METADATA) or {}
    for label_id, record in records.items():
        if isinstance(record, dict) and record.get("class"):
            classes[int(label_id)] = str(record["class"])
    features = meta.get("features")
    if features is not None and len(features) and "class" in features and "index" in features:
        for label_id, name in zip(list(features["index"]), list(features["class"]), strict=True):
            if isinstance(name, str) and name:
                classes[int(label_id)] = name
    return classes


def _plane(data: Any, path: str) -> np.ndarray:
    array = np.asarray(data[0] if isinstance(data, list) else data)  # a multiscale layer: its full resolution
    array = array.reshape(array.shape[-2:]) if array.ndim > 2 and np.prod(array.shape[:-2]) == 1 else array
    if array.ndim != 2:
        raise InputError(f"{Path(path).name}: COCO and YOLO files hold 2D labels; this layer has shape {array.shape}. "
                         "Save a 2D layer (or one slice), or use napari-sam annotate-dataset.")
    return array


def _image_name(meta: dict, path: str) -> str:
    name = (meta.get("metadata") or {}).get(IMAGE_FILE_METADATA)
    return Path(name).name if name else f"{Path(path).stem}.png"


def write_coco(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: one Labels layer as a COCO instance JSON file (RLE masks).

    Parameters
    ----------
    path
        The ``.json`` file (napari has asked before replacing one).
    data
        The layer's (H, W) labels.
    meta
        The layer's attributes (``features``, ``metadata``, ``name``).

    Returns
    -------
    list of str
        The file written.
    """
    from napari_sam.engine.export.coco import save_coco
    from napari_sam.engine.export.instances import InstanceAnnotation

    annotation = InstanceAnnotation(_plane(data, path), layer_classes(meta), _image_name(meta, path))
    return [str(save_coco(path, [annotation], overwrite=True))]


def write_yolo(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: one Labels layer as a YOLO-seg label file, with ``data.yaml`` beside it.

    ``data.yaml`` is written when there is none; one with other class names is an error
    (it belongs to another dataset), one with the same names is left as it is.

    Parameters
    ----------
    path
        The ``.txt`` file (named after the image's stem).
    data
        The layer's (H, W) labels.
    meta
        The layer's attributes (``features``, ``metadata``).

    Returns
    -------
    list of str
        The files written.
    """
    from napari_sam.engine.export.instances import InstanceAnnotation, class_names_for
    from napari_sam.engine.export.yolo import (
        DATA_YAML,
        read_class_names,
        save_data_yaml,
        save_yolo_txt,
    )

    labels = _plane(data, path)
    classes = layer_classes(meta)
    data_yaml = Path(path).parent / DATA_YAML
    names = class_names_for([InstanceAnnotation(labels, classes)])
    written = []
    if data_yaml.exists():
        existing = read_class_names(data_yaml)
        if set(names) - set(existing):
            raise InputError(f"{data_yaml} names the classes {existing}, not {names}: save into another folder.")
        names = existing
    else:
        written.append(str(save_data_yaml(data_yaml.parent, names, train=".")))
    save_yolo_txt(path, labels, classes, names, overwrite=True)
    return [str(Path(path).resolve()), *written]


def _labels_layer(annotation, name: str, image_file: str | None) -> tuple:
    ids = sorted(annotation.classes)
    classes = [annotation.classes[i] for i in ids]
    records = {i: {"score": float("nan"), "class": c, "plane": ""} for i, c in zip(ids, classes, strict=True)}
    metadata = {OBJECTS_METADATA: records}
    if image_file:
        metadata[IMAGE_FILE_METADATA] = image_file
    kwargs = {"name": name, "features": {"index": ids, "class": classes}, "metadata": metadata}
    return annotation.labels, kwargs, "labels"


def _image_layers(image_path: Path | None, annotation, name: str) -> list[tuple]:
    from napari_sam.engine.io.images import open_image

    layers = []
    if image_path is not None and image_path.is_file():
        layers.append((np.asarray(open_image(image_path)[...]), {"name": name}, "image"))
    layers.append(_labels_layer(annotation, f"{name} labels", str(image_path) if image_path else None))
    return layers


def _coco_image_folders(path: Path) -> list[Path]:
    """Where a COCO file's images may be: beside it, ``images/`` there, or the folder annotate-dataset read."""
    folders = [path.parent, path.parent / "images", path.parent.parent / "images"]
    manifest = path.parent / ".napari-sam" / "dataset.json"
    if manifest.is_file():
        try:
            folders.append(Path(json.loads(manifest.read_text(encoding="utf-8"))["settings"]["images"]))
        except (KeyError, TypeError, ValueError, OSError):
            pass
    return folders


def read_coco_layers(path: str) -> list[tuple]:
    """npe2 reader: each image of a COCO file (when found) and its labels over it.

    Parameters
    ----------
    path
        A COCO instance JSON file.

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer type)``: per image an Image layer (when its file is found
        beside the JSON, in ``images/`` there, or where annotate-dataset read it) and a
        Labels layer named ``<stem> labels``.
    """
    from napari_sam.engine.export.coco import read_coco

    path_ = Path(path)
    layers = []
    for annotation in read_coco(path_):
        name = Path(annotation.file_name).stem or path_.stem
        found = next((f / annotation.file_name for f in _coco_image_folders(path_) if (f / annotation.file_name).is_file()),
                     None)
        layers += _image_layers(found, annotation, name)
    return layers


def get_coco_reader(path: str | list) -> Any:
    """npe2 reader contribution: :func:`read_coco_layers` for a COCO JSON file, else None.

    Parameters
    ----------
    path
        What napari opens.

    Returns
    -------
    callable or None
        The reader, or None for anything that is not a COCO file.
    """
    from napari_sam.engine.export.coco import looks_like_coco

    if isinstance(path, (str, os.PathLike)) and looks_like_coco(path):
        return read_coco_layers
    return None


def read_yolo_layers(path: str) -> list[tuple]:
    """npe2 reader: each image of a YOLO dataset and its labels over it.

    Parameters
    ----------
    path
        The dataset folder or its ``data.yaml``.

    Returns
    -------
    list of tuple
        Per image an Image layer and a Labels layer ``<stem> labels``.
    """
    from napari_sam.engine.export.yolo import read_yolo_dataset

    layers = []
    for image_path, annotation in read_yolo_dataset(path):
        layers += _image_layers(image_path, annotation, image_path.stem)
    return layers


def get_yolo_reader(path: str | list) -> Any:
    """npe2 reader contribution: :func:`read_yolo_layers` for a YOLO dataset folder or its YAML, else None.

    Parameters
    ----------
    path
        What napari opens.

    Returns
    -------
    callable or None
        The reader, or None when ``path`` has no ``data.yaml`` with ``names``.
    """
    from napari_sam.engine.export.yolo import find_data_yaml

    if not isinstance(path, (str, os.PathLike)):
        return None
    found = find_data_yaml(path)
    if found is None:
        return None
    try:
        text = found.read_text(encoding="utf-8")
    except OSError:
        return None
    return read_yolo_layers if "names" in text else None
