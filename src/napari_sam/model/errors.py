"""Exceptions raised while fetching and loading model weights.

Kept in a module of its own (no torch, no pooch) so callers such as the napari
widgets can catch them without importing anything heavy.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file could not be used as SAM weights: not a checkpoint, unsafe, or the wrong architecture."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Neither an existing checkpoint file nor a model name from the zoo."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled code or objects, not just tensors; it was refused without running it."""


class ArchitectureMismatchError(CheckpointError):
    """The tensors in a checkpoint do not fit the requested (or any known) architecture."""


class UnknownModelError(CheckpointError):
    """A model name that is not in the zoo."""


class DownloadError(RuntimeError):
    """A zoo checkpoint could not be downloaded (server unreachable, HTTP error, ...)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file did not have the published sha256; it was deleted, not cached."""


class DeviceError(RuntimeError):
    """The requested torch device does not exist here (no CUDA / MPS) or is not a device name.

    A ``RuntimeError`` as before, so callers that caught that keep working; the engine's
    ``select_device`` turns it into an ``InputError``.
    """
