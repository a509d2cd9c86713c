"""Writing files without losing data: checks before anything is created, temporary
names beside the target, and swaps into place once a result is complete.

The rules (see GUIDE.md, "Writing safely"): check the folder before creating anything;
write a new result beside its target under a hidden temporary name in the SAME folder (a
rename is only atomic within one file system); move it into place only when complete; on
failure delete the temporary. An output never touches the input: not the same path, not
inside the input's folder tree, not a folder that holds the input.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_sam.engine.errors import InputError

TEMPORARY_MARK = ".napari-sam-tmp"
"""Part of every temporary name this module creates (hidden files, in the target's folder)."""


def resolved(path: str | os.PathLike) -> Path:
    """``path`` absolute, with ``~``, symbolic links and ``..`` resolved (it need not exist).

    Parameters
    ----------
    path
        Any file or folder path.

    Returns
    -------
    Path
        The resolved path.
    """
    return Path(path).expanduser().resolve()


def paths_overlap(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are the same path or one lies inside the other.

    Parameters
    ----------
    a, b
        Paths, compared after :func:`resolved` (so links and ``..`` do not hide an overlap).

    Returns
    -------
    bool
        Whether they overlap.
    """
    a, b = resolved(a), resolved(b)
    return a == b or a in b.parents or b in a.parents


def array_source_path(array: Any) -> Path | None:
    """The file or folder an opened array reads from, when it says so (memory maps, zarr, our images).

    Parameters
    ----------
    array
        An opened array: its ``source_path`` or ``filename`` attribute, or its zarr
        ``store``'s ``root`` or ``path``, is read.

    Returns
    -------
    Path or None
        As the array reports it (not resolved); None for arrays that do not say,
        e.g. plain numpy or dask arrays.
    """
    for attribute in ("source_path", "filename"):  # napari_sam's ImageFile, np.memmap
        value = getattr(array, attribute, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    store = getattr(array, "store", None)
    for attribute in ("root", "path"):  # zarr 3 LocalStore, zarr 2 DirectoryStore
        value = getattr(store, attribute, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return Path(value)
    return None


def check_output_folder(path: str | os.PathLike) -> Path:
    """The folder ``path`` will be written in, checked to exist and to take new files.

    Raises ``InputError`` naming the folder when it does not exist, is not a folder or is read-only.

    Parameters
    ----------
    path
        The output's path (it need not exist); its resolved parent is checked by
        creating and deleting a hidden probe file there.

    Returns
    -------
    Path
        The resolved folder.

    Raises
    ------
    InputError
        The folder does not exist, is a file, or does not take new files.
    """
    folder = resolved(path).parent
    if not folder.exists():
        raise InputError(f"The folder {folder} for the output {Path(path).name} does not exist; create it first.")
    if not folder.is_dir():
        raise InputError(f"Cannot write {Path(path).name} in {folder}: it is a file, not a folder.")
    try:  # as root, permission bits say nothing: only creating a file tells
        handle, probe = tempfile.mkstemp(prefix=f".{TEMPORARY_MARK}-probe-", dir=folder)
    except OSError as error:
        raise InputError(
            f"Cannot write in the folder {folder} (read-only or no permission): {error.strerror}."
        ) from error
    os.close(handle)
    os.unlink(probe)
    return folder


def ensure_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raise ``InputError`` when the disk holding ``folder`` has less than ``needed_bytes`` free.

    Parameters
    ----------
    folder
        An existing folder on the disk to check.
    needed_bytes
        The space required.
    what
        What the space is for, named in the message (e.g. "the labels out.tif").

    Raises
    ------
    InputError
        Less than ``needed_bytes`` is free.
    """
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise InputError(
            f"Not enough free space for {what}: it needs {_size(needed_bytes)}, the disk holding {folder} has "
            f"{_size(free)} free. Free some space or write to another disk."
        )


def is_disk_full(error: BaseException) -> bool:
    """True for the errors a full disk (or an exceeded quota) raises.

    Parameters
    ----------
    error
        Any exception.

    Returns
    -------
    bool
        True for an ``OSError`` with ``errno`` ENOSPC or EDQUOT.
    """
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def temporary_sibling(path: str | os.PathLike, directory: bool = False) -> Path:
    """A new, empty, hidden temporary file (or folder) beside ``path``, named after it.

    Parameters
    ----------
    path
        The target; its resolved parent folder must exist.
    directory
        Create a folder instead of a file.

    Returns
    -------
    Path
        The created file or folder, with ``path``'s suffix (writers choose the format by it).
    """
    target = resolved(path)
    prefix = f".{target.name}.{TEMPORARY_MARK}-"
    # the same suffix as the target: writers choose the format by it
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=target.suffix, dir=target.parent))
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
    os.close(handle)
    return Path(name)


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file or a folder tree if it exists.

    Parameters
    ----------
    path
        A file, a folder (deleted with its contents, errors ignored) or a symbolic
        link (the link is removed, not its target). Nothing there: nothing is done.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def move_into_place(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete result ``new`` at ``target``, replacing what was there.

    A file replaces a file in one atomic ``os.replace``. A folder cannot be replaced
    atomically: the old one is renamed aside, the new one renamed in, then the old one
    deleted (if renaming in fails, the old one is renamed back).

    Parameters
    ----------
    new
        The complete result, in the same folder as ``target``.
    target
        Where it goes; it need not exist.
    """
    new, target = Path(new), Path(target)
    if not (target.is_dir() and not target.is_symlink()):
        os.replace(new, target)
        return
    aside = temporary_sibling(target, directory=True)
    aside.rmdir()  # only its unique name is needed
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    remove_path(aside)


def reserve_file_space(handle: int, size: int, path: str | os.PathLike) -> None:
    """Allocate ``size`` bytes of the open file ``handle`` on disk now.

    A memory-mapped file is sparse; writing its pages on a full disk kills the process with
    SIGBUS. Reserving the space up front turns that into a clear ``InputError`` here.
    Where the file system cannot reserve space (no ``posix_fallocate``), nothing is done.

    Parameters
    ----------
    handle
        An open file descriptor, writable.
    size
        Bytes to allocate from offset 0.
    path
        The file's path as named in the error (the final one for a temporary).

    Raises
    ------
    InputError
        The disk is full or the quota exceeded.
    OSError
        Any other failure to allocate, except that the file system does not support it.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    try:
        fallocate(handle, 0, size)
    except OSError as error:
        if is_disk_full(error):
            raise InputError(
                f"The disk is full: could not reserve {_size(size)} for {Path(path).name} in {Path(path).parent}. "
                "Free some space or write to another disk."
            ) from error
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def nbytes(shape: tuple[int, ...], dtype: npt.DTypeLike) -> int:
    """Bytes of an uncompressed array of ``shape`` and ``dtype``.

    Parameters
    ----------
    shape
        The array's shape.
    dtype
        Anything ``np.dtype`` accepts.

    Returns
    -------
    int
        ``prod(shape) * itemsize``, computed in int64.
    """
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
