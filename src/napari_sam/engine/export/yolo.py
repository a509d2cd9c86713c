"""YOLO-seg (Ultralytics' segmentation format) out and in.

One ``.txt`` per image, named after the image's stem; one line per object::

    <class index> x1 y1 x2 y2 ... xn yn

with 0-based class indices into the dataset's ``names`` and n >= 3 vertices normalised to
[0, 1]: x by the image width, y by its height, in the frame where pixel (row, col) covers
``[col, col + 1) x [row, row + 1)`` (so ``x = (col + 0.5) / W`` at a pixel centre). An image
without objects has an empty file. A dataset folder holds ``images/train/``,
``labels/train/`` (Ultralytics finds a label file by replacing ``/images/`` with ``/labels/``
in the image's path) and ``data.yaml`` (``path``, ``train``, ``val``, ``names``).

What the format loses: a line is ONE polygon, so an object's parts are joined by
zero-width bridges (``polygons.merge_parts``) and its holes are filled. (An object whose
outline has fewer than 3 vertices would be left out and reported; tracing gives even a
single pixel 4.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError
from napari_sam.engine.export.files import optional_module, write_text
from napari_sam.engine.export.instances import (
    InstanceAnnotation,
    check_labels,
    class_of,
    object_ids,
    painted_annotation,
)
from napari_sam.engine.export.polygons import (
    DEFAULT_TOLERANCE,
    mask_to_polygons,
    merge_parts,
    polygons_to_mask,
)

DATA_YAML = "data.yaml"
TRAIN_IMAGES = "images/train"
TRAIN_LABELS = "labels/train"


def yolo_lines(
    labels: npt.ArrayLike,
    classes: Mapping[int, str] | None,
    class_names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[list[str], list[int]]:
    """The YOLO-seg lines of one image's objects, in ascending label id.

    Parameters
    ----------
    labels
        (H, W) instance labels.
    classes
        Label id -> class name (missing: the default class).
    class_names
        The dataset's ``names``; the class index is the position in it.
    tolerance
        Polygon simplification, pixels.

    Returns
    -------
    lines : list of str
        One per object that could be outlined.
    skipped : list of int
        Ids of objects too small to outline (fewer than 3 vertices).

    Raises
    ------
    InputError
        Bad labels, or a class missing from ``class_names``.
    """
    labels = check_labels(labels)
    height, width = labels.shape
    index = {name: k for k, name in enumerate(class_names)}
    lines, skipped = [], []
    for label_id in object_ids(labels):
        name = class_of(classes, label_id)
        if name not in index:
            raise InputError(f"Object {label_id} has class {name!r}, which is not in the class list {list(class_names)}.")
        polygon = merge_parts(mask_to_polygons(labels == label_id, tolerance))
        if len(polygon) < 3:
            skipped.append(int(label_id))
            continue
        normalised = np.clip(polygon / [width, height], 0.0, 1.0)
        lines.append(f"{index[name]} " + " ".join(f"{v:.6f}" for v in normalised.ravel()))
    return lines, skipped


def save_yolo_txt(
    path: str | os.PathLike,
    labels: npt.ArrayLike,
    classes: Mapping[int, str] | None,
    class_names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> list[int]:
    """Write one image's YOLO-seg label file, safely.

    Parameters
    ----------
    path
        The ``.txt`` file (named after the image's stem).
    labels
        (H, W) instance labels.
    classes
        Label id -> class name.
    class_names
        The dataset's ``names``.
    tolerance
        Polygon simplification, pixels.
    overwrite
        Replace an existing file.

    Returns
    -------
    list of int
        Ids of objects left out as too small to outline.

    Raises
    ------
    InputError
        Not a ``.txt`` path, the file exists (without ``overwrite``), or bad labels.
    """
    if Path(path).suffix.lower() != ".txt":
        raise InputError(f"A YOLO label file ends in .txt; got {Path(path).name}.")
    lines, skipped = yolo_lines(labels, classes, class_names, tolerance)
    write_text(path, "".join(line + "\n" for line in lines), overwrite=overwrite)
    return skipped


def save_data_yaml(
    folder: str | os.PathLike,
    class_names: Sequence[str],
    train: str = TRAIN_IMAGES,
    val: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data.yaml`` of a YOLO dataset folder (``path``, ``train``, ``val``, ``names``).

    Parameters
    ----------
    folder
        The dataset folder (``path`` in the file, absolute).
    class_names
        ``names``: index -> class.
    train
        Training images, relative to ``folder``.
    val
        Validation images; None: the training images (split the dataset yourself).
    overwrite
        Replace an existing ``data.yaml``.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InputError
        It exists (without ``overwrite``) or the folder is missing or read-only.
    """
    yaml = optional_module("yaml", "Writing data.yaml")
    folder = Path(folder).expanduser().resolve()
    content = {
        "path": str(folder),
        "train": train,
        "val": val or train,
        "names": {k: str(name) for k, name in enumerate(class_names)},
    }
    return write_text(folder / DATA_YAML, yaml.safe_dump(content, sort_keys=False), overwrite=overwrite)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The ``names`` of a ``data.yaml`` (a list, or a mapping index -> name).

    Parameters
    ----------
    path
        The ``data.yaml`` file.

    Returns
    -------
    list of str
        Class names by index (missing indices named by their number).

    Raises
    ------
    InputError
        Unreadable YAML or no ``names``.
    """
    yaml = optional_module("yaml", "Reading data.yaml")
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"Cannot read {path}: {error}") from error
    names = content.get("names") if isinstance(content, dict) else None
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        top = max((int(k) for k in names), default=-1)
        return [str(names.get(k, names.get(str(k), k))) for k in range(top + 1)]
    raise InputError(f"{path} has no 'names' list: not a YOLO data.yaml.")


def read_yolo_txt(
    path: str | os.PathLike, shape: tuple[int, int], class_names: Sequence[str] | None = None
) -> InstanceAnnotation:
    """One YOLO label file as instance labels of ``shape``.

    Objects are numbered by line (1, 2, ...); where they overlap, the earlier line keeps the
    pixels. A line of 4 coordinates is a detection box (x_centre y_centre width height),
    drawn as a rectangle.

    Parameters
    ----------
    path
        The ``.txt`` file.
    shape
        (H, W) of its image.
    class_names
        The dataset's ``names``; None: classes are named by their index.

    Returns
    -------
    InstanceAnnotation
        Labels (uint32) and classes; ``file_name`` is the text file's name.

    Raises
    ------
    InputError
        A line that is not ``class`` followed by an even number (>= 4) of numbers in [0, 1].
    """
    height, width = int(shape[0]), int(shape[1])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"Cannot read the YOLO label file {path}: {error.strerror or error}") from error
    objects, classes = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise InputError(f"{Path(path).name} line {number} is not numbers: {line[:60]!r}") from None
        coordinates = np.asarray(values[1:])
        if not values[0].is_integer() or len(coordinates) < 4 or len(coordinates) % 2:
            raise InputError(
                f"{Path(path).name} line {number} is not 'class x1 y1 x2 y2 x3 y3 ...' (class, then pairs of numbers)."
            )
        if coordinates.min() < -1e-6 or coordinates.max() > 1 + 1e-6:
            raise InputError(f"{Path(path).name} line {number} has coordinates outside [0, 1]; YOLO's are normalised.")
        if len(coordinates) == 4:  # a detection box: centre and size
            cx, cy, w, h = coordinates
            points = np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2],
                               [cx - w / 2, cy + h / 2]])
        else:
            points = coordinates.reshape(-1, 2)
        label_id = len(objects) + 1
        objects.append((label_id, polygons_to_mask([points * [width, height]], (height, width))))
        index = int(values[0])
        classes[label_id] = class_names[index] if class_names and 0 <= index < len(class_names) else str(index)
    return painted_annotation((height, width), objects, classes, Path(path).name)


def label_file_for(image_path: str | os.PathLike) -> Path:
    """Where Ultralytics looks for an image's labels: ``/images/`` -> ``/labels/``, suffix ``.txt``.

    Parameters
    ----------
    image_path
        An image inside a dataset's ``images`` folder.

    Returns
    -------
    Path
        The label file's path (it may not exist).
    """
    parts = list(Path(image_path).parts)
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def find_data_yaml(path: str | os.PathLike) -> Path | None:
    """The ``data.yaml`` (or other ``.yaml`` with ``names``) of a dataset folder, or the file itself.

    Parameters
    ----------
    path
        A dataset folder or a YAML file.

    Returns
    -------
    Path or None
        The YAML file, or None when there is none.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return path
    if path.is_dir():
        for name in (DATA_YAML, "data.yml", "dataset.yaml"):
            if (path / name).is_file():
                return path / name
    return None


def read_yolo_dataset(path: str | os.PathLike) -> list[tuple[Path, InstanceAnnotation]]:
    """Every image of a YOLO dataset with its labels (images without a label file have none).

    Parameters
    ----------
    path
        The dataset folder (with ``data.yaml``) or the ``data.yaml`` itself; ``train``,
        ``val`` and ``test`` may be folders or lists of folders, relative to ``path``.

    Returns
    -------
    list of (Path, InstanceAnnotation)
        Image path and its annotation (``file_name`` the image's name), sorted by path.

    Raises
    ------
    InputError
        No ``data.yaml``, or a bad label file.
    """
    from napari_sam.engine.io.images import IMAGE_SUFFIXES, open_image

    yaml_path = find_data_yaml(path)
    if yaml_path is None:
        raise InputError(f"{path} has no data.yaml: not a YOLO dataset folder.")
    yaml = optional_module("yaml", "Reading data.yaml")
    content = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    names = read_class_names(yaml_path)
    root = Path(content.get("path") or yaml_path.parent)
    if not root.is_absolute():
        root = yaml_path.parent / root
    if not root.exists():  # a dataset moved since data.yaml was written
        root = yaml_path.parent
    folders: list[Path] = []
    for split in ("train", "val", "test"):
        entries = content.get(split) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            folder = root / entry
            if folder.is_dir() and folder not in folders:
                folders.append(folder)
    images = sorted({p for f in folders for p in f.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES})
    result = []
    for image_path in images:
        shape = tuple(open_image(image_path).shape[:2])
        label_path = label_file_for(image_path)
        if label_path.is_file():
            annotation = read_yolo_txt(label_path, shape, names)
        else:
            annotation = InstanceAnnotation(np.zeros(shape, dtype=np.uint32), {})
        annotation.file_name = image_path.name
        result.append((image_path, annotation))
    return result
