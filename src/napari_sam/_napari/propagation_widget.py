"""The annotator's Propagate controls: a thin Qt layer over :class:`~.propagation.PropagationController`.

Direction, Propagate / Cancel, Commit / Discard; what happens is said on the annotator's
status line. Propagate runs
the engine in a napari thread worker (a generator: each plane comes back to the
main thread as it is computed, with a progress bar; Cancel stops after the plane in
progress). Shown only for an image with slices or frames.
"""

from __future__ import annotations

from magicgui import widgets
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_sam._napari import keys
from napari_sam._napari import planes as plane_ops
from napari_sam._napari.propagation import (
    DIRECTIONS,
    PropagationController,
    PropagationRequest,
)
from napari_sam._napari.workers import guarded, original_error
from napari_sam._napari.wrapping import WrappingLabel
from napari_sam.engine.errors import InputError

PROPAGATE_ACTION = "napari-sam:propagate"
# errors a propagation can meet without a bug (bad input, out of memory, a full disk): a notification
RUN_ERRORS = (InputError, ValueError, RuntimeError, MemoryError, OSError)


def _row(*items: widgets.Widget) -> widgets.Container:
    row = widgets.Container(layout="horizontal", labels=False, widgets=list(items))
    row.margins = (0, 0, 0, 0)
    return row


class PropagationPanel(QWidget):
    """Propagate the annotator's current object through the slices (or frames), preview, commit."""

    def __init__(self, annotator, parent: QWidget | None = None):
        super().__init__(parent)
        self.annotator = annotator
        from napari_sam._napari.propagation import propagation_of

        self.propagation: PropagationController = propagation_of(annotator)
        self.propagation.run_in_background = self._run_in_background
        self._worker = None
        self._progress: progress | None = None
        self._cancelled = False
        self.direction = widgets.ComboBox(
            label="Direction",
            choices=[(text, value) for value, text in DIRECTIONS.items()],
            value="both",
            tooltip="Which way to follow the object from this slice: both ways, or only towards higher "
            "or lower slice (or frame) numbers",
        )
        self.propagate_button = widgets.PushButton(
            tooltip="Follow the object shown in yellow on this slice through the neighbouring slices "
            "(or frames), one slice after the other, until it ends. The result is a preview: "
            "check it (also in the 3D view), correct a slice if needed, then Commit."
        )
        self.cancel_button = widgets.PushButton(
            text="Cancel",
            enabled=False,
            tooltip="Stop after the slice being computed; the slices done stay in the preview",
        )
        self.commit_button = widgets.PushButton(
            text="Commit 3D object",
            enabled=False,
            tooltip="Write the propagated object into the labels layer with one id on every slice it reaches "
            "(one undo step)",
        )
        self.discard_button = widgets.PushButton(
            text="Discard", enabled=False, tooltip="Drop the propagation preview; nothing is written"
        )
        self.heading = WrappingLabel(
            "<b>Through the stack:</b> follow the object in yellow to the next slices (or frames)", rich=True
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        layout.addWidget(self.heading)
        for item in (
            widgets.Container(widgets=[self.direction]),
            _row(self.propagate_button, self.cancel_button),
            _row(self.commit_button, self.discard_button),
        ):
            layout.addWidget(item.native)
        self.direction.changed.connect(self._on_direction)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button.clicked.connect(self.commit)
        self.discard_button.clicked.connect(lambda: self.propagation.discard())
        self.propagation.state_changed.connect(self._update_buttons)
        annotator.image_changed.connect(self._on_image_changed)
        self.show_shortcut()
        self._on_image_changed(annotator.image_layer)

    # ============================================================ state
    def show_shortcut(self) -> None:
        """Put the Propagate key (as napari binds it now) on the button."""
        key = keys.shortcut_text(PROPAGATE_ACTION)
        self.propagate_button.text = f"Propagate ({key})" if key else "Propagate"

    def _on_image_changed(self, layer) -> None:
        self.cancel()
        # only a stack or a movie has slices to propagate through
        self.setVisible(layer is not None and len(plane_ops.spatial_shape(layer)) >= 3)

    def _update_buttons(self) -> None:
        running = self._worker is not None or self.propagation.running
        shown = self.propagation.has_result()
        self.propagate_button.enabled = not running
        self.cancel_button.enabled = running
        self.commit_button.enabled = shown and not running
        self.discard_button.enabled = shown and not running

    def _on_direction(self, value: str) -> None:
        self.propagation.direction = value

    def is_running(self) -> bool:
        """True while a propagation worker runs."""
        return self._worker is not None

    # ========================================================== actions
    def propagate(self, direction: str | None = None) -> None:
        """Propagate from the slice shown (as the Propagate key does), in a worker."""
        try:
            self.propagation.start(direction)
        except InputError as err:
            self._report(str(err))

    def _run_in_background(self, request: PropagationRequest) -> None:
        job = self.propagation.job(request)
        worker = create_worker(guarded(job), _start_thread=False, _connect={"errored": self._on_error})
        worker.yielded.connect(self._on_plane)
        worker.returned.connect(self._on_result)
        worker.finished.connect(self._on_finished)
        self._worker, self._cancelled = worker, False
        self._progress = progress(total=request.planes_to_compute(), desc="SAM propagation")
        self._update_buttons()
        worker.start()

    def _on_plane(self, plane_result) -> None:
        if self._worker is None or self._worker.abort_requested:
            return  # a plane that was queued before Cancel
        self.propagation.show_plane(plane_result)
        if self._progress is not None:
            self._progress.update(1)

    def _on_result(self, result) -> None:
        self.propagation.finish(result)

    def _on_error(self, error: BaseException) -> None:
        error = original_error(error)
        self.propagation.stopped()
        if not isinstance(error, RUN_ERRORS):
            raise error  # a bug: napari shows the traceback (and a test fails); finished still frees the panel
        message = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
        self._report(f"Propagation failed: {message}", error=True)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        if self.propagation.running:  # no result came: cancelled
            self.propagation.stopped(cancelled=self._cancelled)
        self._update_buttons()

    def cancel(self) -> None:
        """Stop the propagation after the slice being computed."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def commit(self) -> None:
        """Commit the propagated object (as the commit key does while a propagation is shown)."""
        try:
            self.propagation.commit()
        except InputError as err:
            self._report(str(err), error=True)

    def _report(self, text: str, error: bool = False) -> None:
        self.annotator._set_status(text)  # the annotator's status line, under these buttons
        (show_error if error else show_warning)(text)

    def close_panel(self) -> None:
        """Stop the worker and disconnect (the dock closes)."""
        self.cancel()
        self.annotator.image_changed.disconnect(self._on_image_changed)
        self.propagation.run_in_background = None
        self.propagation.close()
