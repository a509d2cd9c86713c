"""Where the boxes of auto-annotation come from: box files, a detector, or arrays.

Box files: one per image, named after the image's stem (``cells_01.png`` ->
``cells_01.csv`` or ``cells_01.json``), in a folder of their own.

* CSV: a header, then one row per box. Columns (any order, names case-insensitive):
  ``x_min, y_min, x_max, y_max`` (required), ``class`` and ``score`` (optional).
* JSON: a list of objects with the same keys, or ``{"boxes": [...]}``.

Coordinates are pixels, **x = column, y = row**, as detectors print them (``xyxy``);
they reach SAM unchanged, as Meta's predictor takes a detector's boxes. A header with no rows
is an image without objects; a file with nothing in it (not even a header) is an error.
Boxes reaching past the image are clipped to it; a box entirely outside the image, or with
``x_max < x_min`` or ``y_max < y_min``, is refused (``InputError`` naming the file and row).

Detectors: any callable ``image -> (boxes, classes, scores)`` (:class:`Detector`).
Inside the engine, boxes are ``(min_row, min_col, max_row, max_col)`` like every prompt.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
"""The required columns of a box file (pixels; x = column, y = row)."""
BOX_SUFFIXES = (".csv", ".json")


@dataclass
class Boxes:
    """Boxes of one image in the engine's frame, with a class (and maybe a score) each."""

    boxes: np.ndarray
    """(N, 4) float64 (min_row, min_col, max_row, max_col), pixels."""
    classes: list[str] = field(default_factory=list)
    """N class names ('' when none was given)."""
    scores: np.ndarray | None = None
    """(N,) detector confidences, or None."""
    source: str = ""
    """Where they came from, named in errors (a file, 'the detector')."""

    def __len__(self) -> int:
        return len(self.boxes)


def boxes_from_xyxy(
    xyxy: npt.ArrayLike,
    classes: Sequence[Any] | None = None,
    scores: npt.ArrayLike | None = None,
    source: str = "",
    class_names: Sequence[str] | dict | None = None,
) -> Boxes:
    """Boxes from detector-style ``(N, 4)`` ``x_min, y_min, x_max, y_max`` (x = column).

    Parameters
    ----------
    xyxy
        (N, 4) pixel coordinates; N may be 0.
    classes
        N class names, or class indices into ``class_names``; None: no classes.
    scores
        N confidences, or None.
    source
        Named in errors.
    class_names
        Names of integer classes (a list, or a dict index -> name); None: an integer class
        is named by its number.

    Returns
    -------
    Boxes
        In the engine's frame (min_row, min_col, max_row, max_col).

    Raises
    ------
    InputError
        Not (N, 4), not finite, a max below its min, or lengths that differ.
    """
    array = np.asarray(xyxy, dtype=np.float64)
    if array.size == 0:
        array = array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise InputError(f"Boxes from {source or 'the input'} must be (N, 4) x_min, y_min, x_max, y_max; got {array.shape}.")
    if not np.isfinite(array).all():
        raise InputError(f"Boxes from {source or 'the input'} hold NaN or infinite coordinates.")
    bad = np.flatnonzero((array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))
    if len(bad):
        raise InputError(f"Box {bad[0] + 1} of {source or 'the input'} has x_max < x_min or y_max < y_min: "
                         f"{array[bad[0]].tolist()}.")
    names = _class_names(classes, len(array), source, class_names)
    score_array = None
    if scores is not None:
        score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(score_array) != len(array):
            raise InputError(f"{source or 'The input'} gives {len(score_array)} scores for {len(array)} boxes.")
    return Boxes(array[:, [1, 0, 3, 2]].copy(), names, score_array, source)


def _class_names(classes, count: int, source: str, class_names) -> list[str]:
    if classes is None:
        return [""] * count
    values = list(np.asarray(classes).reshape(-1).tolist()) if not isinstance(classes, list) else list(classes)
    if len(values) != count:
        raise InputError(f"{source or 'The input'} gives {len(values)} classes for {count} boxes.")
    names = []
    for value in values:
        if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
            index = int(value)
            if isinstance(class_names, dict):
                names.append(str(class_names.get(index, index)))
            elif class_names is not None and 0 <= index < len(class_names):
                names.append(str(class_names[index]))
            else:
                names.append(str(index))
        else:
            names.append("" if value is None else str(value).strip())
    return names


def read_box_file(path: str | os.PathLike) -> Boxes:
    """The boxes of a CSV or JSON box file (columns in the module's docstring).

    Parameters
    ----------
    path
        A ``.csv`` or ``.json`` file.

    Returns
    -------
    Boxes
        Possibly none (a header without rows, an empty JSON list).

    Raises
    ------
    InputError
        Missing or empty file, missing columns, values that are not numbers, bad boxes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"No such box file: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read the box file {path}: {error}") from error
    if not text.strip():
        raise InputError(
            f"The box file {path} is empty. Write the header {','.join(BOX_COLUMNS)},class (and no rows for an "
            "image without objects)."
        )
    if path.suffix.lower() == ".json":
        rows = _json_rows(text, path)
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in BOX_COLUMNS if c not in header]
        if missing:
            raise InputError(f"The box file {path} lacks the column(s) {', '.join(missing)}; its header is "
                             f"{','.join(header)}. Expected {','.join(BOX_COLUMNS)}[,class][,score].")
    else:
        raise InputError(f"A box file is .csv or .json, not {path.name}.")
    rows = [{str(k).strip().lower(): v for k, v in row.items() if k is not None} for row in rows]
    coordinates, classes, scores = [], [], []
    for number, row in enumerate(rows, start=1):
        where = f"{path.name} box {number}"
        try:
            coordinates.append([float(row[c]) for c in BOX_COLUMNS])
            if row.get("score") not in (None, ""):
                scores.append(float(row["score"]))
        except KeyError as error:
            raise InputError(f"{where} has no {error.args[0]}.") from None
        except (TypeError, ValueError):
            raise InputError(f"{where} has a coordinate or score that is not a number: {row}.") from None
        classes.append("" if row.get("class") is None else str(row["class"]).strip())
    if scores and len(scores) != len(rows):
        raise InputError(f"{path.name}: give a score for every box or for none.")
    return boxes_from_xyxy(np.asarray(coordinates).reshape(-1, 4), classes, scores or None, path.name)


def _json_rows(text: str, path: Path) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"The box file {path} is not valid JSON: {error}") from error
    if isinstance(data, dict):
        data = data.get("boxes")
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise InputError(f"The box file {path} must hold a list of boxes, each {{{', '.join(BOX_COLUMNS)}, class}}.")
    return data


def clip_boxes(boxes: Boxes, shape: tuple[int, int]) -> Boxes:
    """``boxes`` clipped to an image of ``shape``; a box entirely outside it is refused.

    Parameters
    ----------
    boxes
        In the engine's frame.
    shape
        (H, W) of the image.

    Returns
    -------
    Boxes
        Coordinates clipped to ``[0, H]`` x ``[0, W]`` (the image's edges).

    Raises
    ------
    InputError
        A box lies entirely outside the image (named by its row in the source).
    """
    height, width = int(shape[0]), int(shape[1])
    b = boxes.boxes
    outside = np.flatnonzero((b[:, 2] < 0) | (b[:, 0] > height) | (b[:, 3] < 0) | (b[:, 1] > width))
    if len(outside):
        x0, y0, x1, y1 = b[outside[0]][[1, 0, 3, 2]].tolist()
        raise InputError(
            f"Box {outside[0] + 1} of {boxes.source or 'the input'} (x {x0:g}..{x1:g}, y {y0:g}..{y1:g}) lies "
            f"entirely outside the image of {width} x {height} pixels (width x height). Are x and y swapped?"
        )
    clipped = b.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, height)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, width)
    return Boxes(clipped, list(boxes.classes), boxes.scores, boxes.source)


def pair_box_files(images: Sequence[Path], boxes_dir: str | os.PathLike) -> dict[Path, Path]:
    """The box file of each image: same stem, ``.csv`` or ``.json``, in ``boxes_dir``.

    Parameters
    ----------
    images
        The image files.
    boxes_dir
        The folder of box files.

    Returns
    -------
    dict
        Image path -> box file path, for every image.

    Raises
    ------
    InputError
        The folder is missing, an image has no box file, a box file has no image, or a stem
        has two box files; the message names them.
    """
    folder = Path(boxes_dir)
    if not folder.is_dir():
        raise InputError(f"The boxes folder {folder} does not exist (give a folder of <image stem>.csv/.json files).")
    files: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in BOX_SUFFIXES and not p.name.startswith("."):
            files.setdefault(p.stem, []).append(p)
    doubled = [f"{', '.join(q.name for q in v)}" for v in files.values() if len(v) > 1]
    if doubled:
        raise InputError(f"Two box files for one image in {folder}: {doubled[0]}; keep one.")
    stems = {image.stem: image for image in images}
    unboxed = [image.name for stem, image in stems.items() if stem not in files]
    orphans = [v[0].name for stem, v in files.items() if stem not in stems]
    problems = []
    if unboxed:
        problems.append(f"no box file for {len(unboxed)} image(s): {_first(unboxed)} (expected <stem>.csv or "
                        f"<stem>.json in {folder})")
    if orphans:
        problems.append(f"{len(orphans)} box file(s) match no image: {_first(orphans)}")
    if problems:
        raise InputError("Images and box files do not pair up: " + "; ".join(problems) + ".")
    return {image: files[image.stem][0] for image in images}


def _first(names: list[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


@runtime_checkable
class Detector(Protocol):
    """A detector: ``detector(image) -> (boxes, classes, scores)``.

    ``image`` is the image as read from disk, (H, W) or (H, W, C), (row, col) indexed.
    ``boxes`` is (N, 4) ``x_min, y_min, x_max, y_max`` in pixels (x = column), ``classes``
    N names or indices, ``scores`` N confidences (or None). An optional attribute
    ``class_names`` (a list, or a dict index -> name) names integer classes and fixes the
    class order of the dataset.
    """

    def __call__(self, image: np.ndarray) -> tuple[Any, Any, Any]: ...


def detect(detector: Detector, image: np.ndarray, min_score: float | None = None) -> Boxes:
    """Run ``detector`` on ``image`` and check what it returns.

    Parameters
    ----------
    detector
        A :class:`Detector`.
    image
        The image, (row, col) indexed.
    min_score
        Drop detections below this confidence; None keeps all.

    Returns
    -------
    Boxes
        In the engine's frame, classes named through the detector's ``class_names``.

    Raises
    ------
    InputError
        The detector returned something other than ``(boxes, classes, scores)``.
    """
    result = detector(image)
    if not isinstance(result, tuple) or len(result) != 3:
        raise InputError("A detector must return (boxes, classes, scores); got " + type(result).__name__ + ".")
    xyxy, classes, scores = result
    boxes = boxes_from_xyxy(xyxy, classes, scores, "the detector", getattr(detector, "class_names", None))
    if min_score is not None and boxes.scores is not None:
        keep = boxes.scores >= min_score
        boxes = Boxes(boxes.boxes[keep], [c for c, k in zip(boxes.classes, keep, strict=True) if k],
                      boxes.scores[keep], boxes.source)
    return boxes
