"""Saving an annotation: a label image as TIFF and its object table as CSV beside it, written safely.

Both files are written under temporary names in the target folder and renamed into place
only once both are complete; an existing file is replaced only when asked to (``overwrite``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.safe_write import (
    check_output_folder,
    ensure_free_space,
    is_disk_full,
    move_into_place,
    nbytes,
    remove_path,
    resolved,
    temporary_sibling,
)

TIFF_SUFFIXES = (".tif", ".tiff")


def table_path(path: str | os.PathLike) -> Path:
    """The CSV written beside the label TIFF ``path``: same folder and name, suffix ``.csv``.

    Parameters
    ----------
    path
        The label TIFF's path.

    Returns
    -------
    Path
        ``path`` with its suffix replaced by ``.csv``.
    """
    return Path(path).with_suffix(".csv")


def existing_outputs(path: str | os.PathLike) -> list[Path]:
    """The files that saving to ``path`` would replace (the TIFF, its CSV), those that exist.

    Parameters
    ----------
    path
        The label TIFF's path.

    Returns
    -------
    list of Path
        Existing targets, TIFF first.
    """
    return [target for target in (Path(path), table_path(path)) if target.exists()]


def label_file_dtype(labels: npt.ArrayLike) -> np.dtype:
    """The unsigned type a label TIFF is written with: uint16 when the ids fit, else uint32 or uint64.

    Parameters
    ----------
    labels
        The label image (0 the background).

    Returns
    -------
    np.dtype
        The smallest of uint16, uint32, uint64 holding the largest id.

    Raises
    ------
    InputError
        The labels hold negative ids.
    """
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise InputError("The labels hold negative ids; a label TIFF holds ids 0 (background) and above.")
    top = int(labels.max(initial=0))
    for dtype in (np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def save_labels(
    path: str | os.PathLike,
    labels: npt.ArrayLike,
    table: Mapping[str, Sequence] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``labels`` as a TIFF at ``path`` and ``table`` as ``<name>.csv`` beside it.

    Parameters
    ----------
    path
        Target ``.tif`` / ``.tiff`` file.
    labels
        Label image of any shape (planes along the leading axes), 0 the background.
    table
        Columns of the object table (equal lengths), e.g. ``index``, ``area``, ``score``;
        None: no CSV.
    overwrite
        Replace existing files; without it an existing TIFF or CSV is an error.

    Returns
    -------
    list of Path
        The files written, TIFF first.

    Raises
    ------
    InputError
        Wrong suffix, a file exists (without ``overwrite``), the folder is missing or
        read-only, the disk is too full, or the labels hold negative ids. Nothing is left
        behind.
    """
    import tifffile

    target = resolved(path)
    if target.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"Save labels as a .tif or .tiff file, not '{target.name}'.")
    folder = check_output_folder(target)
    existing = existing_outputs(target)
    if existing and not overwrite:
        names = " and ".join(p.name for p in existing)
        raise InputError(f"{names} already exist(s) in {folder}; choose another name or allow overwriting.")
    labels = np.asarray(labels)
    dtype = label_file_dtype(labels)
    ensure_free_space(folder, nbytes(labels.shape, dtype) + 2**20, f"the labels {target.name}")
    targets = [target] + ([table_path(target)] if table is not None else [])
    temporaries: list[Path] = []
    try:
        temporaries.append(temporary_sibling(target))
        tifffile.imwrite(temporaries[0], labels.astype(dtype, copy=False))
        if table is not None:
            temporaries.append(temporary_sibling(targets[1]))
            _write_csv(temporaries[1], table)
        for new, final in zip(temporaries, targets, strict=True):
            move_into_place(new, final)
    except OSError as error:
        if is_disk_full(error):
            raise InputError(f"The disk is full: could not write {target.name} in {folder}.") from error
        raise
    finally:
        for temporary in temporaries:
            remove_path(temporary)  # already moved: nothing there
    return targets


def _write_csv(path: Path, table: Mapping[str, Sequence]) -> None:
    columns = list(table)
    rows = zip(*(table[column] for column in columns), strict=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
