"""A RuntimeError inside a generator worker reaches ``errored`` and ``finished`` once guarded."""

from __future__ import annotations

import pytest

from napari_sam.model.errors import DownloadError

pytestmark = pytest.mark.gui


def _failing_job():
    yield 1
    raise DownloadError("server unreachable")


def test_a_runtime_error_in_a_generator_worker_reaches_errored(qtbot):
    from napari.qt.threading import create_worker

    from napari_sam._napari.workers import guarded, original_error

    errors, finished = [], []
    worker = create_worker(guarded(_failing_job), _start_thread=False, _connect={"errored": errors.append})
    worker.finished.connect(lambda: finished.append(True))
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.start()
    assert finished == [True]
    assert len(errors) == 1 and isinstance(original_error(errors[0]), DownloadError)
    assert str(original_error(errors[0])) == "server unreachable"


def test_unguarded_the_same_job_would_never_finish(qtbot):
    """Why guarded exists: superqt takes the RuntimeError for an aborted thread."""
    from napari.qt.threading import create_worker

    errors, finished = [], []
    worker = create_worker(_failing_job, _start_thread=False, _connect={"errored": errors.append})
    worker.finished.connect(lambda: finished.append(True))
    with pytest.warns(RuntimeWarning, match="aborted thread"):
        worker.run()  # in this thread, to see the outcome deterministically
    assert errors == [] and finished == []


def test_guarded_keeps_plain_results_and_yields():
    from napari_sam._napari.workers import WorkerFailure, guarded

    def job():
        yield 1
        yield 2
        return "done"

    gen = guarded(job)()
    assert [next(gen), next(gen)] == [1, 2]
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "done"
    assert guarded(lambda x: x + 1)(1) == 2
    with pytest.raises(WorkerFailure):
        guarded(lambda: 1 / 0)()
