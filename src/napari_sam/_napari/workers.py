"""Running work in napari's worker threads without losing its errors.

superqt's generator workers (``napari.qt.threading.create_worker`` on a generator
function) treat a ``RuntimeError`` from the generator as "the thread was aborted":
they print a warning and emit neither ``errored`` nor ``finished``, so a widget
waiting for them stays busy for good. ``DownloadError``, torch's out-of-memory and
many other errors are RuntimeErrors. :func:`guarded` carries every exception out
as a :class:`WorkerFailure` (not a RuntimeError), and :func:`original_error` gives
the handler of ``errored`` the exception that was raised.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class WorkerFailure(Exception):
    """An exception raised inside a worker, carried to ``errored`` unchanged in ``error``."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def guarded(function: F) -> F:
    """``function`` (a plain or a generator function) with every exception re-raised as ``WorkerFailure``.

    Parameters
    ----------
    function
        The worker's job. A generator function keeps yielding as before; its return
        value is kept.

    Returns
    -------
    callable
        The wrapped job, to pass to ``create_worker``.
    """
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                return (yield from function(*args, **kwargs))
            except Exception as error:
                raise WorkerFailure(error) from error

        return generator  # type: ignore[return-value]

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise WorkerFailure(error) from error

    return call  # type: ignore[return-value]


def original_error(error: BaseException) -> BaseException:
    """The exception a guarded job raised (``error`` itself when it is not a ``WorkerFailure``).

    Parameters
    ----------
    error
        What the worker's ``errored`` signal delivered.

    Returns
    -------
    BaseException
        The exception to report or re-raise.
    """
    return error.error if isinstance(error, WorkerFailure) else error
