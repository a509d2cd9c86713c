"""Instance label images out and in: TIFF (uint16, or uint32 when the ids need it) or 16-bit
PNG, with the class of each object in a CSV beside it (``index,class``, same name, suffix
``.csv``).

TIFF goes through ``engine/io/label_files.py`` (the annotator's "Save labels"); PNG holds
ids up to 65535. Both files are written under temporary names and moved into place together.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError
from napari_sam.engine.export.instances import (
    InstanceAnnotation,
    check_labels,
    class_of,
    object_ids,
)
from napari_sam.engine.io.label_files import (
    TIFF_SUFFIXES,
    existing_outputs,
    save_labels,
    table_path,
)
from napari_sam.engine.io.safe_write import (
    check_output_folder,
    move_into_place,
    remove_path,
    resolved,
    temporary_sibling,
)

PNG_SUFFIXES = (".png",)
LABEL_IMAGE_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES


def class_table(labels: np.ndarray, classes: Mapping[int, str] | None) -> dict[str, list]:
    """The CSV written beside a label image: ``index`` (the id) and ``class``, one row per object.

    Parameters
    ----------
    labels
        (H, W) instance labels.
    classes
        Label id -> class name.

    Returns
    -------
    dict
        Columns ``index`` and ``class``.
    """
    ids = object_ids(labels)
    return {"index": [int(i) for i in ids], "class": [class_of(classes, i) for i in ids]}


def save_label_image(
    path: str | os.PathLike,
    labels: npt.ArrayLike,
    classes: Mapping[int, str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``labels`` as a TIFF or PNG at ``path`` and its classes as ``<name>.csv`` beside it.

    Parameters
    ----------
    path
        ``.tif``, ``.tiff`` or ``.png``.
    labels
        (H, W) instance labels.
    classes
        Label id -> class name (missing: the default class).
    overwrite
        Replace existing files.

    Returns
    -------
    list of Path
        The image, then the CSV.

    Raises
    ------
    InputError
        Another suffix, a file exists (without ``overwrite``), ids beyond 65535 in a PNG,
        or bad labels.
    """
    labels = check_labels(labels)
    table = class_table(labels, classes)
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return save_labels(path, labels, table, overwrite=overwrite)
    if suffix not in PNG_SUFFIXES:
        raise InputError(f"Save a label image as .tif, .tiff or .png, not '{Path(path).name}'.")
    if int(labels.max(initial=0)) > np.iinfo(np.uint16).max:
        raise InputError(f"A PNG holds ids up to 65535; these labels go to {labels.max()}: save them as .tif.")
    target = resolved(path)
    check_output_folder(target)
    existing = existing_outputs(target)
    if existing and not overwrite:
        raise InputError(f"{' and '.join(p.name for p in existing)} already exist(s); allow overwriting to replace.")
    from PIL import Image

    targets = [target, table_path(target)]
    temporaries = [temporary_sibling(t) for t in targets]
    try:
        Image.fromarray(labels.astype(np.uint16)).save(temporaries[0], format="PNG")
        _write_table(temporaries[1], table)
        for new, final in zip(temporaries, targets, strict=True):
            move_into_place(new, final)
    finally:
        for temporary in temporaries:
            remove_path(temporary)
    return targets


def _write_table(path: Path, table: Mapping[str, list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(table))
        writer.writerows(zip(*table.values(), strict=True))


def read_label_image(path: str | os.PathLike) -> InstanceAnnotation:
    """A label image and the classes of the CSV beside it (when there is one).

    Parameters
    ----------
    path
        A ``.tif``/``.tiff``/``.png`` label image (2D).

    Returns
    -------
    InstanceAnnotation
        Labels as stored, classes from the CSV's ``index`` and ``class`` columns (empty
        without a CSV); ``file_name`` the image's name.

    Raises
    ------
    InputError
        Missing or unreadable file, not 2D, or a CSV without ``index``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No such label image: {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            labels = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                labels = np.asarray(image)
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot read the label image {path}: {error}") from error
    labels = check_labels(labels, f"The label image {path.name}")
    classes: dict[int, str] = {}
    table = table_path(path)
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "index" not in rows[0]:
            raise InputError(f"{table.name} has no 'index' column: not the object table of {path.name}.")
        classes = {int(row["index"]): row.get("class", "") or "" for row in rows}
    return InstanceAnnotation(labels, classes, path.name)
