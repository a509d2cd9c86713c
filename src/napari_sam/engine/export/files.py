"""Small files of the dataset formats (JSON, text, YAML) written safely, and optional imports.

A file is written under a temporary name beside its target and moved into place when
complete (engine/io/safe_write.py); an existing file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.safe_write import (
    check_output_folder,
    move_into_place,
    remove_path,
    resolved,
    temporary_sibling,
)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) at ``path`` safely.

    Parameters
    ----------
    path
        The target file; its folder must exist.
    text
        The whole content.
    overwrite
        Replace an existing file; without it an existing file is an error.

    Returns
    -------
    Path
        The resolved path written.

    Raises
    ------
    InputError
        The file exists (without ``overwrite``), or the folder is missing or read-only.
    """
    target = resolved(path)
    check_output_folder(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; choose another name or allow overwriting (--overwrite).")
    temporary = temporary_sibling(target)
    try:
        temporary.write_text(text, encoding="utf-8")
        move_into_place(temporary, target)
    finally:
        remove_path(temporary)  # moved already when it worked
    return target


def optional_module(name: str, purpose: str) -> ModuleType:
    """Import ``name``, or raise an ``InputError`` saying which extra installs it.

    Parameters
    ----------
    name
        The module, e.g. "pycocotools.mask".
    purpose
        What it is needed for, named in the message.

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    InputError
        It is not installed.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise InputError(
            f"{purpose} needs the package {name.split('.')[0]}: pip install \"napari-sam[datasets]\"."
        ) from error
