"""Label outputs: in memory, as zarr or as a memory-mapped TIFF, written without losing data.

An output is first PLANNED (:func:`plan_output`: every check, nothing created), then
OPENED (:func:`open_output`) as a :class:`LabelOutput`, filled, and COMMITTED or
DISCARDED:

- A TIFF is always written under a temporary name beside the target, its space reserved
  on disk before it is memory-mapped, and renamed into place once complete. An
  interrupted run leaves no TIFF at the target path.
- A new zarr is written in place, its attributes saying how far it got
  (``attrs["napari_sam"]``: ``complete``, ``tiles_done``, ``tiles_total`` and what the
  writer needs to resume). An interrupted run that finished some tiles leaves it there,
  marked ``complete: false``; one that finished none leaves nothing.
- An existing output is only replaced when asked to (``overwrite``), by a new one written
  under a temporary name beside it and swapped in once complete; until then the old one
  is untouched.
- An output is never the input, inside the input's folder tree, or a folder holding it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.safe_write import (
    array_source_path,
    check_output_folder,
    ensure_free_space,
    is_disk_full,
    move_into_place,
    nbytes,
    paths_overlap,
    remove_path,
    reserve_file_space,
    resolved,
    temporary_sibling,
)

INFO_ATTRIBUTE = "napari_sam"
"""The zarr attribute holding an output's progress: ``complete``, ``tiles_done``, ``tiles_total``, ..."""

LABEL_DTYPE = np.int32
_TIFF_HEADER_BYTES = 4096  # generous bytes per page (and file) beyond the pixels: header and tags


def output_format(path: str | os.PathLike) -> str:
    """``"zarr"`` or ``"tiff"`` from ``path``'s suffix; ``InputError`` for anything else.

    Parameters
    ----------
    path
        The output path; ``.zarr``, ``.tif`` or ``.tiff`` in any case, a trailing
        slash allowed.

    Returns
    -------
    str
        ``"zarr"`` or ``"tiff"``.

    Raises
    ------
    InputError
        Any other suffix.
    """
    lower = os.fspath(path).lower().rstrip("/\\")
    if lower.endswith(".zarr"):
        return "zarr"
    if lower.endswith((".tif", ".tiff")):
        return "tiff"
    raise InputError(f"Cannot write labels to {os.fspath(path)!r}: use a path ending in .zarr, .tif or .tiff.")


def create_output(out: Any, shape: tuple[int, ...], chunks: tuple[int, ...] | None = None) -> Any:
    """A new zero-filled int32 label array.

    Parameters
    ----------
    out
        None for a numpy array; a path ending in ``.zarr`` / ``.tif`` / ``.tiff`` for a new
        zarr array or memory-mapped TIFF there (an existing path is refused: this function
        never replaces anything; :func:`plan_output` / :func:`open_output` do that safely);
        or an array of shape ``shape``, returned as is.
    shape
        The label array's shape, e.g. (H, W) or (Z, H, W).
    chunks
        zarr chunks; default one plane of up to 1024 x 1024 pixels.

    Returns
    -------
    np.ndarray, zarr.Array or np.memmap
        The zero-filled array (numpy, zarr or memory-mapped TIFF), or ``out`` itself
        when it is an array (not cleared).

    Raises
    ------
    InputError
        The path exists, its folder is missing or read-only, a TIFF does not fit on the disk,
        the suffix is unknown, or ``out`` has another shape.
    """
    if out is None:
        return np.zeros(shape, dtype=LABEL_DTYPE)
    if isinstance(out, (str, os.PathLike)):
        kind = output_format(out)
        if os.path.lexists(out):
            raise InputError(f"{os.fspath(out)} exists; choose another path or remove it first.")
        check_output_folder(out)
        return _new_on_disk(kind, out, shape, chunks)
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"out has shape {tuple(out.shape)}, but the labels have shape {tuple(shape)}.")
    return out


def _new_on_disk(kind: str, path, shape: tuple[int, ...], chunks=None, final_path=None, info: dict | None = None):
    """A new zarr (with ``info`` as its progress attribute) or TIFF at ``path``, which must not exist.

    On failure nothing is left at ``path``; a full disk is an ``InputError`` naming ``final_path``
    (where the result is meant to end up; default ``path``).
    """
    final_path = Path(final_path or path)
    try:
        if kind == "tiff":
            return _new_tiff(path, shape, final_path)
        array = _new_zarr(path, shape, chunks)
        if info is not None:
            array.attrs[INFO_ATTRIBUTE] = info
        return array
    except BaseException as error:
        remove_path(path)
        if is_disk_full(error):
            raise InputError(
                f"The disk is full: could not create {final_path.name} in {final_path.parent}. "
                "Free some space or write to another disk."
            ) from error
        raise


def _new_zarr(path, shape: tuple[int, ...], chunks: tuple[int, ...] | None):
    import zarr

    chunks = chunks or tuple([1] * (len(shape) - 2) + [min(1024, s) for s in shape[-2:]])
    return zarr.open_array(os.fspath(path), mode="w", shape=shape, chunks=chunks, dtype=LABEL_DTYPE, fill_value=0)


def _new_tiff(path, shape: tuple[int, ...], final_path=None):
    """An uncompressed, memory-mapped TIFF, its space reserved on disk (a sparse map died with SIGBUS).

    ``final_path``: where the file will end up (named in errors) when ``path`` is a temporary.
    """
    import tifffile

    final_path = Path(final_path or path)
    size = nbytes(shape, LABEL_DTYPE)
    slices = int(np.prod(shape[:-2], dtype=np.int64))
    ensure_free_space(final_path.parent, size + _TIFF_HEADER_BYTES * (1 + slices), f"the labels {final_path.name}")
    array = tifffile.memmap(os.fspath(path), shape=shape, dtype=LABEL_DTYPE, bigtiff=size > 2**31)
    with open(path, "r+b") as handle:
        reserve_file_space(handle.fileno(), os.fstat(handle.fileno()).st_size, final_path)
    return array


@dataclass
class OutputPlan:
    """What :func:`plan_output` found: where the labels go and what is there now.

    ``kind``: "memory", "array", "zarr" or "tiff"; ``path``: the target (resolved) for the
    last two; ``exists``: something is at ``path``; ``info``: the ``napari_sam`` attributes
    of an existing zarr (None when absent).
    """

    kind: str
    shape: tuple[int, ...]
    out: Any = None
    path: Path | None = None
    exists: bool = False
    info: dict | None = None
    overwrite: bool = False
    resume: bool = False


def plan_output(
    out: Any,
    shape: tuple[int, ...],
    *,
    image: Any = None,
    overwrite: bool = False,
    resume: bool = False,
) -> OutputPlan:
    """Check where labels of ``shape`` are to go, creating and deleting nothing.

    Parameters
    ----------
    out
        None (labels in memory), an array to fill, or a ``.zarr`` / ``.tif`` / ``.tiff`` path.
    shape
        The label array's shape.
    image
        The input (a path or an opened array): the output may not be it, lie inside it or hold it.
    overwrite
        Allow replacing an existing output (once the new one is complete).
    resume
        Allow continuing an existing, interrupted zarr output (the caller decides whether it
        matches its run, see :class:`OutputPlan` ``info``).

    Returns
    -------
    OutputPlan
        The checked plan, with ``info`` read from an existing zarr.

    Raises
    ------
    InputError
        The output is (or overlaps) the input; its folder is missing or read-only; it exists and
        neither ``overwrite`` nor ``resume`` allows touching it; ``resume`` with a TIFF or an array.
    """
    if out is None or not isinstance(out, (str, os.PathLike)):
        if resume:
            raise InputError("Only a zarr output (out='....zarr') can be resumed.")
        if out is not None:
            _check_array_output(out, shape, image)
        return OutputPlan("memory" if out is None else "array", tuple(shape), out=out)
    kind = output_format(out)
    _check_not_the_input(out, image)
    if resume and kind != "zarr":
        raise InputError(
            f"Only a zarr output can be resumed; {Path(out).name} is a TIFF, which is only written once complete."
        )
    path = resolved(out)
    check_output_folder(path)
    exists = os.path.lexists(path)
    info = read_output_info(path) if exists and kind == "zarr" else None
    if exists and not (overwrite or resume):
        raise InputError(_exists_message(path, info))
    if exists and (kind == "tiff") == path.is_dir():
        what = "a folder, not a TIFF file" if kind == "tiff" else "a file, not a zarr folder"
        raise InputError(f"{path} is {what}; choose another output path.")
    return OutputPlan(kind, tuple(shape), out=out, path=path, exists=exists, info=info,
                      overwrite=overwrite, resume=resume)


def _check_array_output(out, shape: tuple[int, ...], image) -> None:
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"out has shape {tuple(out.shape)}, but the labels have shape {tuple(shape)}.")
    same = out is image or (
        isinstance(out, np.ndarray) and isinstance(image, np.ndarray) and np.shares_memory(out, image)
    )
    if same:
        raise InputError("out is the input image: the input is never written over; pass another array.")


def _check_not_the_input(out, image) -> None:
    if image is None:
        return
    source = Path(image) if isinstance(image, (str, os.PathLike)) else array_source_path(image)
    if source is not None and paths_overlap(out, source):
        raise InputError(
            f"The output {os.fspath(out)} is the input image {source}, lies inside it or holds it: the input is "
            "never written over. Choose an output path outside the input."
        )


def _exists_message(path: Path, info: dict | None) -> str:
    if info and not info.get("complete", False):
        return (
            f"{path} exists and holds an interrupted run ({info.get('tiles_done', 0)} of "
            f"{info.get('tiles_total', '?')} tiles done): pass resume=True (napari-sam segment --resume) to "
            "continue it with the same settings, or overwrite=True (--overwrite) to start over."
        )
    return f"{path} exists; pass overwrite=True (napari-sam segment --overwrite) to replace it, or choose another path."


def read_output_info(path: str | os.PathLike) -> dict | None:
    """The ``napari_sam`` attributes of the zarr array at ``path`` (None when it has none or is no zarr array).

    Parameters
    ----------
    path
        A zarr array folder (anything else gives None).

    Returns
    -------
    dict or None
        A copy of the attribute.
    """
    import zarr

    try:
        array = zarr.open_array(os.fspath(path), mode="r")
    except Exception:  # not a zarr array (a group, a file, a damaged folder): no progress to read
        return None
    info = dict(array.attrs).get(INFO_ATTRIBUTE)
    return dict(info) if isinstance(info, dict) else None


@dataclass
class LabelOutput:
    """A label array being written and how to finish it (:meth:`commit`) or undo it (:meth:`discard`).

    ``array`` is what to write into; ``path`` the target; ``temporary`` the file or folder the
    array really lives in until :meth:`commit` moves it to ``path`` (None: written in place);
    ``info`` the progress recorded in a zarr's ``napari_sam`` attribute.
    """

    array: Any
    kind: str
    path: Path | None = None
    temporary: Path | None = None
    resumed: bool = False
    info: dict = field(default_factory=dict)

    def record(self, **info: Any) -> None:
        """Update the progress attribute (zarr outputs; other outputs keep it in ``info`` only).

        Parameters
        ----------
        **info
            Entries to set, e.g. ``tiles_done=3``; the whole ``info`` is written again.
        """
        self.info.update(info)
        if self.kind == "zarr":
            self.array.attrs[INFO_ATTRIBUTE] = self.info

    def commit(self) -> Any:
        """Mark the output complete, move it into place and return it opened (the array for in-memory ones)."""
        if self.kind in ("memory", "array"):
            return self.array
        self.record(complete=True)
        if self.kind == "tiff":
            self.array.flush()
        self.array = None  # a memory map must be closed before its file is renamed (Windows)
        if self.temporary is not None:
            move_into_place(self.temporary, self.path)
            self.temporary = None
        return _reopen(self.path, self.kind)

    def discard(self) -> None:
        """After a failure: delete a temporary result; keep an in-place zarr that holds work to resume."""
        self.array = None
        if self.temporary is not None:
            remove_path(self.temporary)
            self.temporary = None
        elif self.kind == "zarr" and not self.resumed and not self.info.get("tiles_done"):
            remove_path(self.path)  # a new zarr with nothing in it: nothing worth resuming


def _reopen(path: Path, kind: str):
    if kind == "zarr":
        import zarr

        return zarr.open_array(os.fspath(path), mode="r+")
    import tifffile

    return tifffile.memmap(os.fspath(path), mode="r+")


def open_output(plan: OutputPlan, info: dict | None = None, *, resume_existing: bool = False) -> LabelOutput:
    """Create (or, with ``resume_existing``, reopen) the output ``plan`` describes.

    A TIFF, and a zarr replacing an existing output, are created under a temporary name
    beside ``plan.path``; a new zarr in place. ``info`` is recorded as the zarr's progress
    attribute (``complete`` set to False).

    Parameters
    ----------
    plan
        From :func:`plan_output`.
    info
        Progress entries to record (``tiles_total``, ``run``, ...).
    resume_existing
        Reopen the existing zarr at ``plan.path`` for writing instead of creating one;
        its stored ``info`` is kept, updated with ``info``.

    Returns
    -------
    LabelOutput
        To fill, then :meth:`LabelOutput.commit` or :meth:`LabelOutput.discard`.

    Raises
    ------
    InputError
        The disk is full while creating the output, or too small for a TIFF.
    """
    info = {**(info or {}), "complete": False}
    if plan.kind == "memory":
        return LabelOutput(create_output(None, plan.shape), "memory", info=info)
    if plan.kind == "array":
        return LabelOutput(plan.out, "array", info=info)
    if resume_existing:
        import zarr

        output = LabelOutput(zarr.open_array(os.fspath(plan.path), mode="r+"), "zarr", plan.path, resumed=True,
                             info={**(plan.info or {}), **info})
        return output
    in_place = plan.kind == "zarr" and not plan.exists
    target = plan.path if in_place else temporary_sibling(plan.path, directory=plan.kind == "zarr")
    if not in_place:
        remove_path(target)  # only its unique name is needed: the writer makes the file or folder
    array = _new_on_disk(plan.kind, target, plan.shape, final_path=plan.path,
                         info=info if plan.kind == "zarr" else None)
    return LabelOutput(array, plan.kind, plan.path, temporary=None if in_place else target, info=info)
