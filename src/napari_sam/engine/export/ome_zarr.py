"""OME-Zarr (NGFF) labels out and in, written through the ``ome-zarr`` library.

Layout (NGFF 0.5 with zarr 3, as ``ome-zarr`` writes it)::

    <name>.ome.zarr/                  the image (a multiscale of one level), when given
    <name>.ome.zarr/labels/objects/   the instance labels (one level), with
                                      image-label properties [{"label-value": id, "class": name}]

The store is written in a temporary folder beside the target and moved into place when
complete, so a store at the target is always complete. Reading uses zarr directly and
accepts NGFF 0.4 (attributes at the top level) and 0.5 (under ``"ome"``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError
from napari_sam.engine.export.files import optional_module
from napari_sam.engine.export.instances import (
    InstanceAnnotation,
    check_labels,
    class_of,
    object_ids,
)
from napari_sam.engine.io.safe_write import (
    check_output_folder,
    move_into_place,
    remove_path,
    resolved,
    temporary_sibling,
)

LABEL_NAME = "objects"
"""The name of the label image inside ``labels/``."""


def save_ome_zarr(
    path: str | os.PathLike,
    labels: npt.ArrayLike,
    classes: Mapping[int, str] | None = None,
    image: npt.ArrayLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write instance labels (and their image) as an OME-Zarr store, safely.

    Parameters
    ----------
    path
        The store, e.g. ``cells.ome.zarr``.
    labels
        (H, W) instance labels.
    classes
        Label id -> class name, written as the labels' ``properties``.
    image
        (H, W) or (H, W, C) image stored at the root (channels first, as NGFF orders
        axes); None: the root holds only the labels.
    overwrite
        Replace an existing store (once the new one is complete).

    Returns
    -------
    Path
        The store written.

    Raises
    ------
    InputError
        Not a ``.zarr`` path, the store exists (without ``overwrite``), an image of another
        size, bad labels, or ``ome-zarr`` is not installed.
    """
    import zarr

    with warnings.catch_warnings():  # ome-zarr 0.18 builds a deprecated default Scaler at import
        warnings.simplefilter("ignore", DeprecationWarning)
        writer = optional_module("ome_zarr.writer", "Writing OME-Zarr")

    labels = check_labels(labels)
    target = resolved(path)
    if not target.name.lower().endswith(".zarr"):
        raise InputError(f"An OME-Zarr store ends in .zarr (e.g. .ome.zarr); got {target.name}.")
    check_output_folder(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; choose another name or allow overwriting (--overwrite).")
    pixels = None
    if image is not None:
        pixels = np.asarray(image)
        if pixels.shape[:2] != labels.shape or pixels.ndim not in (2, 3):
            raise InputError(f"The image {pixels.shape} does not match the labels {labels.shape}.")
    properties = [{"label-value": int(i), "class": class_of(classes, i)} for i in object_ids(labels)]
    temporary = temporary_sibling(target, directory=True)
    try:
        root = zarr.open_group(str(temporary), mode="w")
        if pixels is not None:
            channels_first = pixels if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
            writer.write_image(channels_first, root, axes="yx" if pixels.ndim == 2 else "cyx", scale_factors=())
        writer.write_labels(
            labels.astype(np.uint32 if labels.max(initial=0) < 2**32 else np.uint64), root, name=LABEL_NAME,
            axes="yx", scaler=None, scale_factors=(), label_metadata={"properties": properties},
        )
        move_into_place(temporary, target)
    finally:
        remove_path(temporary)
    return target


def _ngff(attrs: Mapping) -> Mapping:
    """NGFF attributes: under "ome" (0.5) or at the top level (0.4)."""
    return attrs.get("ome", attrs)


def read_ome_zarr(path: str | os.PathLike, name: str | None = None) -> InstanceAnnotation:
    """The instance labels of an OME-Zarr store (full resolution) and their classes.

    Parameters
    ----------
    path
        The store (its root, with a ``labels`` group).
    name
        The label image in ``labels/``; None: the first one listed.

    Returns
    -------
    InstanceAnnotation
        Labels (2D; a store with more axes is refused), classes from the ``properties``
        (``class`` of each ``label-value``); ``file_name`` the store's name.

    Raises
    ------
    InputError
        Not a zarr store, no labels, or labels that are not 2D.
    """
    import zarr

    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
        listed = list(_ngff(root["labels"].attrs.asdict()).get("labels", []))
    except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
        raise InputError(f"{path} is not an OME-Zarr store with labels: {error}") from None
    if not listed:
        raise InputError(f"{path} has a 'labels' group that lists no labels.")
    name = name or listed[0]
    group = root[f"labels/{name}"]
    meta = _ngff(group.attrs.asdict())
    level = meta["multiscales"][0]["datasets"][0]["path"]
    labels = check_labels(np.asarray(group[level]), f"The labels '{name}' of {path.name}")
    properties = meta.get("image-label", {}).get("properties", [])
    classes = {int(p["label-value"]): str(p.get("class", "")) for p in properties if "label-value" in p}
    return InstanceAnnotation(labels, classes, path.name)
