"""What identifies a ``segment_everything`` run, how far it got, and where an interrupted one resumes.

A zarr output carries ``attrs["napari_sam"]`` (see ``napari_sam.engine.io.outputs``):

- ``complete``: true only once every tile is painted; ``tiles_done`` / ``tiles_total``:
  painted tiles over all slices, for a reader to tell a finished result from a partial one;
- ``run``: the settings the labels depend on (:func:`run_record`): image shape, dtype and
  intensity range, a fingerprint of its pixels, tile shape, halo, tile offset, the ``method`` ("amg" or
  "instance") and every field of its settings (``AutomaticParams`` or ``InstanceParams``), the
  seam overlap and a fingerprint of the model's weights;
- ``resume``: where to continue: ``plane`` (slice index; 0 for a 2D image), ``first_tile``
  (tiles before it are painted in that slice) and ``labels_used`` (the highest label so far).

A rerun with ``resume=True`` and the same settings continues from ``resume`` (the
stitcher's rule for which tiles run again is in ``stitching``, "Resuming"); other
settings are refused, naming what differs (a run of the other method is refused as such: its
labels would mix two methods). A record written before the method was recorded is an AMG run. The image is identified by its shape, dtype,
intensity range and a fingerprint of its pixels, so another image of the same kind is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.engine.automatic.params import AutomaticParams, method_of
from napari_sam.engine.automatic.stitching import AREA_STEP, CONVEX_ENOUGH
from napari_sam.engine.automatic.tiling import TileGrid
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.outputs import OutputPlan
from napari_sam.engine.predict.fingerprint import image_fingerprint, model_fingerprint

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.automatic.instance import InstanceParams


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: slice ``plane``, tile ``first_tile`` in it, ``labels_used`` labels already painted."""

    plane: int = 0
    first_tile: int = 0
    labels_used: int = 0
    complete: bool = False
    resumed: bool = False
    """True when continuing an existing output (its last tile may have been painted without being recorded)."""


def run_record(
    image: Any,
    image_shape: tuple[int, ...],
    grid: TileGrid,
    tile_offset: int | Sequence[int],
    params: AutomaticParams | InstanceParams,
    intensity_range: tuple | None,
    same_object_overlap: float,
    model: torch.nn.Module,
) -> dict[str, Any]:
    """The settings a run's labels depend on, as JSON-compatible values (stored with the output).

    Parameters
    ----------
    image
        The array-like being segmented; its dtype is recorded and its pixels are
        fingerprinted (:func:`~napari_sam.engine.predict.fingerprint.image_fingerprint`).
    image_shape
        The image's spatial layout, recorded as given.
    grid
        The tile grid; its ``tile_shape`` and ``halo`` are recorded.
    tile_offset
        The seam shift, one value or (rows, cols).
    params
        The tiles' settings: their method (``"amg"`` for ``AutomaticParams``, ``"instance"``
        for ``InstanceParams``) and every field are recorded.
    intensity_range
        The (low, high) scaling of the whole image, or None.
    same_object_overlap
        The stitcher's same-object overlap (recorded with its rank's settings,
        ``stitching.CONVEX_ENOUGH`` and ``AREA_STEP``).
    model
        The SAM module; recorded as
        :func:`~napari_sam.engine.predict.fingerprint.model_fingerprint`.

    Returns
    -------
    dict
        JSON-compatible (tuples as lists), so it compares equal to the record read
        back from the output's attributes.
    """
    record = {
        "image_shape": [int(s) for s in image_shape],
        "image_dtype": str(np.dtype(image.dtype)),
        "pixels": image_fingerprint(image),
        "intensity_range": None if intensity_range is None else [np.asarray(v).tolist() for v in intensity_range],
        "tile_shape": list(grid.tile_shape),
        "halo": list(grid.halo),
        "tile_offset": [int(v) for v in np.broadcast_to(tile_offset, (2,))],
        "method": method_of(params),
        "params": dataclasses.asdict(params),
        "same_object_overlap": float(same_object_overlap),
        # the stitcher's rank (rule 2): a run interrupted under another rank must not be continued with this one
        "rank": {"convex_enough": CONVEX_ENOUGH, "area_step": AREA_STEP},
        "model": model_fingerprint(model),
    }
    return json.loads(json.dumps(record))  # tuples as lists, as they come back from the attributes


def resume_point(plan: OutputPlan, record: dict[str, Any]) -> ResumePoint | None:
    """Where to continue the existing output of ``plan``, or None to write a new one.

    None when there is nothing to resume (no output yet, or ``overwrite`` without
    ``resume``, or ``overwrite`` and a run that does not match). Raises ``InputError`` when
    ``resume`` was asked for an output that holds another run (or none) and ``overwrite`` was not.

    Parameters
    ----------
    plan
        The checked output (``exists``, ``resume``, ``overwrite`` and its stored ``info``).
    record
        This run's settings from :func:`run_record`.

    Returns
    -------
    ResumePoint or None
        With ``resumed=True`` and the stored progress, or None.

    Raises
    ------
    InputError
        ``resume`` without ``overwrite`` for an output that holds no run, or a run
        with other settings (the message names each difference).
    """
    if not plan.exists or not plan.resume:
        return None
    info = plan.info or {}
    if "run" not in info or "resume" not in info:
        if plan.overwrite:
            return None
        raise InputError(
            f"{plan.path} does not hold a napari-sam segment-everything run, so it cannot be resumed; "
            "pass overwrite=True (--overwrite) to replace it, or choose another output path."
        )
    differences = _differences({"method": "amg", **info["run"]}, record)  # unrecorded method: AMG, the only one then
    if differences:
        if plan.overwrite:
            return None
        raise InputError(
            f"{plan.path} holds a run with other settings ({'; '.join(differences)}): resume it with the settings it "
            "was started with, or pass overwrite=True (--overwrite) to replace it."
        )
    state = info["resume"]
    return ResumePoint(
        int(state["plane"]), int(state["first_tile"]), int(state["labels_used"]), bool(info.get("complete")), True
    )


# digests say nothing to a user: name what they stand for instead
_DIGESTS = {"pixels": "the image's pixels differ (another image)", "model": "another model or checkpoint"}


def _differences(stored: dict, now: dict, prefix: str = "") -> list[str]:
    """``"key: <stored> there, <now> now"`` for each setting that differs (nested dicts by dotted key)."""
    if not prefix and stored.get("method") != now.get("method"):
        # another method's settings are another set of fields: naming each would hide the point
        return [f"method: {stored.get('method')} there, {now.get('method')} now"]
    found = []
    for key in sorted(set(stored) | set(now)):
        old, new = stored.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new and key in _DIGESTS:
            found.append(f"{prefix}{key}: {_DIGESTS[key]}")
        elif old != new:
            found.append(f"{prefix}{key}: {old} there, {new} now")
    return found


def progress_after(plane: int, painted_tile: int, n_tiles: int, labels_used: int) -> dict[str, Any]:
    """The progress attributes after tile ``painted_tile`` of slice ``plane`` was painted.

    Parameters
    ----------
    plane
        The slice index (0 for a 2D image).
    painted_tile
        The index of the tile just painted in that slice.
    n_tiles
        Tiles per slice.
    labels_used
        The highest label written so far.

    Returns
    -------
    dict
        ``tiles_done`` (over all slices) and ``resume`` (``plane``, ``first_tile``,
        ``labels_used``), pointing at the next slice after its last tile.
    """
    first_tile = painted_tile + 1
    if first_tile == n_tiles:  # the slice is finished: continue with the next one
        plane, first_tile = plane + 1, 0
    return {
        "tiles_done": plane * n_tiles + first_tile,
        "resume": {"plane": plane, "first_tile": first_tile, "labels_used": int(labels_used)},
    }


def fresh_progress() -> dict[str, Any]:
    """The progress attributes of a run that has painted nothing yet."""
    return {"tiles_done": 0, "resume": {"plane": 0, "first_tile": 0, "labels_used": 0}}


def erase_unrecorded_labels(plane_out: Any, window: tuple[int, int, int, int], labels_used: int) -> None:
    """Clear labels above ``labels_used`` in ``window`` of a 2D output.

    The progress attribute is written after a tile is painted: a run stopped between the two
    may have painted the next tile's objects (all inside its window) without recording them.
    They are erased so that the resumed run paints them again, numbered as before.

    Parameters
    ----------
    plane_out
        The (H, W) output slice (numpy, zarr, memory-mapped TIFF); written only when
        something is erased.
    window
        (row0, row1, col0, col1), half-open, of the tile that may hold unrecorded labels.
    labels_used
        The highest recorded label.
    """
    r0, r1, c0, c1 = window
    region = np.asarray(plane_out[r0:r1, c0:c1])
    stale = region > labels_used
    if stale.any():
        plane_out[r0:r1, c0:c1] = np.where(stale, 0, region)
