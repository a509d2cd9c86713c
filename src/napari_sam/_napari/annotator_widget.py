"""The Segment Anything dock widget: a thin Qt layer over :class:`AnnotatorController`.

The widget chooses the image, the model and the target labels, runs the slow
work (loading a model, computing embeddings) in napari thread workers with a
progress bar, and shows the controller's state. All annotation logic is in the
controller; all computation in the engine.
"""

from __future__ import annotations

import html
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui import widgets
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.action_manager import action_manager
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QSize, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from napari_sam._napari import keys
from napari_sam._napari import planes as plane_ops
from napari_sam._napari.box_range import BoxRangeSection, prompt_mode
from napari_sam._napari.class_picker import ClassPicker
from napari_sam._napari.controller import (
    GESTURES,
    ROLE,
    AnnotatorController,
    PreviewInfo,
)
from napari_sam._napari.dock_layout import (
    DOCK_MAX_WIDTH,
    DOCK_MIN_WIDTH,
    scrolling_column,
)
from napari_sam._napari.model_picker import USER_ERRORS, LoadedModel, ModelPicker
from napari_sam._napari.object_list import ObjectListWidget
from napari_sam._napari.propagation import commit_shown
from napari_sam._napari.propagation_widget import PropagationPanel
from napari_sam._napari.window_picker import WindowPicker, connect_annotator
from napari_sam._napari.workers import guarded, original_error
from napari_sam._napari.wrapping import WrappingLabel
from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    import napari

    from napari_sam._napari.planes import Plane
    from napari_sam.engine.predict.protocol import PredictorProtocol

LOAD_TEXT, CANCEL_LOAD_TEXT = "Load model", "Cancel loading"
PLANE_SETTLE_MS = 250  # embed a slice once the user stops on it, not every slice scrolled past
ANNOTATOR_MIN_HEIGHT = 340  # below this the dock scrolls; Segment everything docked under it gets the rest


def _section(title: str, *items: widgets.Widget | QWidget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(6, 6, 6, 6)
    for item in items:
        layout.addWidget(item.native if isinstance(item, widgets.Widget) else item)
    return box


def _row(*items: widgets.Widget) -> widgets.Container:
    """Widgets side by side, without labels (or margins: the section has its own)."""
    row = widgets.Container(layout="horizontal", labels=False, widgets=list(items))
    row.margins = (0, 0, 0, 0)
    return row


def _wrapping_label(text: str, rich: bool = False) -> QLabel:
    return WrappingLabel(text, rich=rich)


class AnnotatorWidget(QWidget):
    """Dock widget for interactive SAM annotation in ``napari_viewer``."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.controller = AnnotatorController(napari_viewer)
        self.controller.embed_in_background = self._embed_in_background
        self._embed_queue: deque[Plane] = deque()
        self._embed_worker = None
        self._embed_progress: progress | None = None
        self.object_list = ObjectListWidget(self.controller)
        self.class_picker = ClassPicker(self.controller)  # the class committed objects get
        self._lay_out(
            self._setup_section(),
            self._embeddings_section(),
            self._annotate_section(),
            _section("3D box (MedSAM: box + slices)", BoxRangeSection(self.controller)),
            _section("Class", self.class_picker),
            _section("Objects", self.object_list),
            self._keys_section(),
        )
        self._connect_controls()
        self._connect_controller()
        self._connect_viewer()
        connect_annotator(self.window_picker, self)
        if self.image_choice.value is not None:
            self._on_image_chosen(self.image_choice.value)

    # ============================================================= layout
    def _setup_section(self) -> QGroupBox:
        """Image and model: the picker's fields, its description and state, and the Load button."""
        self.image_choice = widgets.ComboBox(
            label="Image", choices=self._image_layers, tooltip="The image layer to segment (2D, a stack, or RGB)"
        )
        self.model_picker = ModelPicker(self.viewer, file_label="File")
        self.model_choice = self.model_picker.model_choice
        self.model_file = self.model_picker.model_file
        self.device_choice = self.model_picker.device_choice
        self.model_info = self.model_picker.info
        self.model_status = self.model_picker.status
        self.load_button = widgets.PushButton(
            text=LOAD_TEXT, tooltip="Load the chosen model (a zoo model is downloaded on first use); click again to cancel"
        )
        self.window_picker = WindowPicker()  # intensity window (CT presets, percentiles) for every slice
        form = widgets.Container(widgets=[self.image_choice, *self.window_picker.widgets, *self.model_picker.widgets])
        return _section("Setup", form, self.model_info, self.load_button, self.model_status)

    def _embeddings_section(self) -> QGroupBox:
        """Embedding the slice shown, every slice, cancelling; saving and loading them on disk."""
        self.auto_embed = widgets.CheckBox(
            text="Embed each slice as I visit it",
            value=True,
            tooltip="Compute the image embedding (the slow step) of each slice you stop on, in the background",
        )
        self.embed_button = widgets.PushButton(text="Embed slice", tooltip="Compute this slice's embedding now")
        self.embed_all_button = widgets.PushButton(
            text="Embed all", tooltip="Compute the embeddings of every slice in the background"
        )
        self.cancel_button = widgets.PushButton(
            text="Cancel", enabled=False, tooltip="Stop computing embeddings after the slice in progress"
        )
        self.save_button = widgets.PushButton(
            text="Save embeddings...",
            tooltip="Keep this image's embeddings in a .zarr folder, to reopen it later without recomputing them",
        )
        self.load_embeddings_button = widgets.PushButton(
            text="Load embeddings...", tooltip="Use embeddings saved earlier for this image and model"
        )
        self.embed_status = _wrapping_label("")
        compute = _row(self.embed_button, self.embed_all_button, self.cancel_button)
        disk = _row(self.save_button, self.load_embeddings_button)
        return _section("Embeddings", self.auto_embed, compute, disk, self.embed_status)

    def _annotate_section(self) -> QGroupBox:
        """The target labels, commit and clear, the candidates of the preview, and the status line."""
        self.labels_choice = widgets.ComboBox(
            label="Labels",
            choices=self._labels_layers,
            nullable=False,
            tooltip="The labels layer that commits write into (a new one is made on the first commit)",
        )
        self.paint_over = widgets.CheckBox(
            text="Paint over existing labels",
            value=False,
            tooltip="Off: a commit fills only unlabelled pixels. On: it overwrites labels already there",
        )
        self.commit_button = widgets.PushButton(
            tooltip="Write the yellow preview into the labels layer as a new object (one undo step)"
        )
        self.clear_button = widgets.PushButton(tooltip="Remove the points and boxes of this slice")
        self.next_button = widgets.PushButton(
            tooltip="A single click is ambiguous: show SAM's next candidate mask (whole object, part, ...)"
        )
        self.preview_status = _wrapping_label(PreviewInfo().describe())
        self.status = _wrapping_label("")
        self.propagation_panel = PropagationPanel(self.controller)  # stacks and movies only
        return _section(
            "Annotate",
            widgets.Container(widgets=[self.labels_choice]),
            self.paint_over,
            _row(self.commit_button, self.clear_button),
            self.next_button,
            self.propagation_panel,
            self.preview_status,
            self.status,
        )

    def _keys_section(self) -> QGroupBox:
        """The mouse gestures and the shortcuts as napari binds them now (remap: Preferences > Shortcuts)."""
        self.bindings_label = _wrapping_label("", rich=True)
        self.bindings_label.setToolTip("Change these keys in napari's Preferences > Shortcuts (Viewer key bindings)")
        self._show_shortcuts()
        return _section("Keys", self.bindings_label)

    def _show_shortcuts(self, event=None) -> None:
        """Fill the key table and the buttons' key hints from napari's action manager."""
        bound = [(keys.shortcut_text(action.name) or "(none)", action.description) for action in keys.ACTIONS]
        rows = "".join(
            f"<tr><td><b>{html.escape(key)}</b></td><td>&nbsp;{html.escape(text.removeprefix('SAM: '))}</td></tr>"
            for key, text in (*GESTURES, *bound)
        )
        self.bindings_label.setText(f"<table>{rows}</table>")
        for button, text, name in (
            (self.commit_button, "Commit", "napari-sam:commit"),
            (self.clear_button, "Clear prompts", "napari-sam:clear_prompts"),
            (self.next_button, "Next candidate", "napari-sam:next_candidate"),
        ):
            key = keys.shortcut_text(name)
            button.text = f"{text} ({key})" if key else text
        self.propagation_panel.show_shortcut()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """Tall enough for the setup fields: docked with Segment everything, it keeps its share of the height."""
        hint = super().minimumSizeHint()
        return QSize(hint.width(), max(hint.height(), ANNOTATOR_MIN_HEIGHT))

    def _lay_out(self, *sections: QGroupBox) -> None:
        """The sections one under the other in a scroll area (a short window scrolls instead of squeezing)."""
        self.setMaximumWidth(DOCK_MAX_WIDTH)
        self.setMinimumWidth(DOCK_MIN_WIDTH)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scrolling_column(*sections))

    # ======================================================== connections
    def _connect_controls(self) -> None:
        self.image_choice.changed.connect(self._on_image_chosen)
        self.load_button.clicked.connect(self.load_model)
        self.model_picker.busy_changed.connect(self._on_model_busy)
        self.embed_button.clicked.connect(lambda: self.embed_current_plane(report=True))
        self.embed_all_button.clicked.connect(self.embed_all_planes)
        self.cancel_button.clicked.connect(self.cancel_embeddings)
        self.save_button.clicked.connect(lambda: self.save_embeddings())
        self.load_embeddings_button.clicked.connect(lambda: self.load_embeddings())
        self.labels_choice.changed.connect(self._on_labels_chosen)
        self.paint_over.changed.connect(self._on_paint_over)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.controller.clear_prompts)
        self.next_button.clicked.connect(lambda: self.controller.cycle_candidate(1))

    def _connect_controller(self) -> None:
        self.controller.status_changed.connect(lambda text: self.status.setText(text))
        self.controller.preview_changed.connect(lambda info: self.preview_status.setText(info.describe()))
        self.controller.plane_changed.connect(self._on_plane_changed)
        self._plane_timer = QTimer(self)
        self._plane_timer.setSingleShot(True)
        self._plane_timer.setInterval(PLANE_SETTLE_MS)
        self._plane_timer.timeout.connect(self._auto_embed_current)

    def _layer_events(self) -> tuple:
        events = self.viewer.layers.events
        return events.inserted, events.removed, events.reordered

    def _connect_viewer(self) -> None:
        for emitter in self._layer_events():
            emitter.connect(self._reset_layer_choices)
        action_manager.events.shortcut_changed.connect(self._show_shortcuts)

    # ============================================================ choices
    def _image_layers(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_layers(self, _widget=None) -> list[tuple[str, Labels | None]]:
        choices: list[tuple[str, Labels | None]] = [("new 'SAM labels' layer", None)]
        image = self.controller.image_layer
        for layer in self.viewer.layers:
            if not isinstance(layer, Labels) or ROLE in layer.metadata:
                continue
            if image is None or tuple(layer.data.shape) == plane_ops.spatial_shape(image):
                choices.append((layer.name, layer))
        return choices

    def _reset_layer_choices(self, event=None) -> None:
        had_image = self.controller.image_layer is not None
        self.image_choice.reset_choices()
        self.labels_choice.reset_choices()
        # a target created by the controller on commit becomes the shown choice
        target = self.controller.labels_layer
        if target is not None and self.labels_choice.value != target:
            self.labels_choice.value = target
        if not had_image and self.image_choice.value is not None:
            # the first image added with the widget open: annotate it, and take back the selection
            # that napari gives the new layer once inserted, so that the first click adds a point
            if self.controller.image_layer is None:
                self._on_image_chosen(self.image_choice.value)
            QTimer.singleShot(0, self.controller.activate_points)

    def _on_image_chosen(self, layer) -> None:
        self.cancel_embeddings()
        try:
            self.controller.set_image_layer(layer)
        except InputError as err:
            self._report(str(err))
            return
        self.labels_choice.reset_choices()
        self._auto_embed_current()

    def _on_labels_chosen(self, layer) -> None:
        try:
            self.controller.set_labels_layer(layer)
        except InputError as err:
            self._report(str(err))
        self.object_list.refresh()

    def _on_paint_over(self, value: bool) -> None:
        self.controller.paint_over = bool(value)

    # ============================================================== model
    def load_model(self) -> None:
        """Load the chosen zoo model or file in a worker (downloading a zoo model on first use).

        While it loads, the button cancels. A model already loaded for this choice (here or
        by Segment everything in this viewer) is used at once.
        """
        if self.model_picker.cancel():
            return
        try:
            self.model_picker.request(self._use_model)
        except USER_ERRORS as err:
            self._report(str(err))

    def _on_model_busy(self, busy: bool) -> None:
        self.load_button.text = CANCEL_LOAD_TEXT if busy else LOAD_TEXT

    def _use_model(self, loaded: LoadedModel) -> None:
        from napari_sam.engine import Predictor

        current = self.controller.predictor
        if current is not None and getattr(current, "model", None) is loaded.model:
            self.model_status.setText(f"{loaded.key.name} is loaded already.")
            return
        try:
            predictor = Predictor(loaded.model, device=loaded.key.torch_device, precision="auto")
        except USER_ERRORS as err:
            self._report(str(err), error=True)
            return
        self.set_predictor(predictor, loaded.key.source)

    def set_predictor(self, predictor: PredictorProtocol, model_id: str | None = None) -> None:
        """Use an engine Predictor (e.g. built from a model in memory) for annotation."""
        self.cancel_embeddings()
        self.controller.set_predictor(predictor, model_id)
        if prompt_mode(model_id) != self.controller.prompt_mode:  # box-first models (MedSAM) start with boxes
            self.controller.prompt_mode = prompt_mode(model_id)
            self.controller.activate_points()
        precision = "fp32" if predictor.autocast_dtype is None else str(predictor.autocast_dtype).replace("torch.", "")
        self.model_status.setText(
            f"Model <b>{html.escape(Path(str(self.controller.model_id)).name)}</b> ({predictor.config.name}) on "
            f"<b>{predictor.device}</b>, {precision}."
        )
        self._auto_embed_current()

    def set_model(self, model, model_id: str | None = None, device: str | None = None, precision: str = "auto") -> None:
        """Use a SAM ``torch.nn.Module`` already in memory."""
        from napari_sam.engine import Predictor

        self.set_predictor(Predictor(model, device=device, precision=precision), model_id)

    # ========================================================= embeddings
    def _on_plane_changed(self, plane) -> None:
        if self.auto_embed.value:
            self._plane_timer.start()

    def _auto_embed_current(self) -> None:
        if self.auto_embed.value:
            self.embed_current_plane(report=False)

    def embed_current_plane(self, report: bool = True) -> None:
        """Compute the embedding of the slice shown (in the background) unless it is cached."""
        controller = self.controller
        if controller.image_layer is None or controller.predictor is None:
            if report:
                self._report("Choose an image and load a model first.")
            return
        try:
            controller.ensure_embedding()
        except InputError as err:
            if report:
                self._report(str(err))

    def embed_all_planes(self) -> None:
        """Queue every slice of the image (on the displayed axes) without an embedding."""
        controller = self.controller
        if controller.image_layer is None or controller.predictor is None:
            self._report("Choose an image and load a model first.")
            return
        try:
            missing = controller.missing_planes()
        except InputError as err:
            self._report(str(err))
            return
        if not missing:
            self.embed_status.setText("Every slice is embedded.")
            return
        cfg = controller.predictor.config
        needed = len(missing) * 4 * cfg.prompt_embed_dim * cfg.embedding_size**2
        cache = controller.cache()
        if needed > cache.max_bytes and cache.store_path is None:
            show_info(
                f"{len(missing)} embeddings need {needed / 2**30:.1f} GiB, more than the in-memory cache keeps "
                f"({cache.max_bytes / 2**30:.1f} GiB); save the embeddings to disk first to keep them all."
            )
        self._queue(missing, front=False)

    def _embed_in_background(self, plane) -> None:
        # the controller asks for the plane being annotated: it goes first
        self._queue([plane], front=True)

    def _queue(self, planes, front: bool) -> None:
        if front:
            for plane in reversed(planes):
                self._embed_queue.appendleft(plane)
        else:
            self._embed_queue.extend(planes)
        if self._embed_progress is not None:
            self._embed_progress.total += len(planes)
            self._embed_progress.refresh()
        if self._embed_worker is None:
            self._start_embed_worker()

    def _next_planes(self, cache):
        """Planes for the worker, taken from the queue as it goes (thread-safe deque), skipping cached ones."""
        while True:
            try:
                plane = self._embed_queue.popleft()
            except IndexError:
                return
            if plane.key not in cache:
                yield plane

    def _start_embed_worker(self) -> None:
        controller = self.controller
        try:
            job = controller.embedding_job(self._next_planes(controller.cache()))
        except InputError as err:
            self._report(str(err))
            self._embed_queue.clear()
            return

        self._embed_progress = progress(total=len(self._embed_queue), desc="SAM image embeddings")
        # guarded: any error (a RuntimeError too) reaches `errored` instead of leaving the worker hanging
        worker = create_worker(guarded(job), _start_thread=False, _connect={"errored": self._on_embed_error})
        worker.yielded.connect(self._on_embedding)
        worker.finished.connect(self._on_embed_worker_finished)
        self._embed_worker = worker
        self.cancel_button.enabled = True
        self.embed_status.setText("Computing embeddings...")
        worker.start()

    def _on_embed_error(self, error: BaseException) -> None:
        """The embedding job failed: say why; ``finished`` follows and frees the widget."""
        error = original_error(error)
        self._embed_queue.clear()
        self.controller.clear_pending()
        self.embed_status.setText("Embedding failed.")
        if isinstance(error, USER_ERRORS):  # e.g. NaN pixels: the user's to fix
            self._report(str(error), error=True)
        else:  # e.g. out of memory: name the kind of error, which the message alone may not
            self._report(f"Computing the embedding failed: {type(error).__name__}: {error}", error=True)

    def _on_embedding(self, result) -> None:
        plane, embedding, generation = result
        self.controller.store_embedding(plane, embedding, generation)
        if self._embed_progress is not None:
            self._embed_progress.update(1)
        self.embed_status.setText(self._embedded_text(plane))

    def _embedded_text(self, plane: Plane) -> str:
        """'Embedded slice z=3; 4 more queued.' (or 'Embedded the image.' for a 2D image)."""
        if not plane.index:
            return "Embedded the image."
        where = self.controller.describe(plane) if self.controller.image_layer is not None else plane.describe()
        queued = len(self._embed_queue)
        return f"Embedded {where}" + (f"; {queued} more queued." if queued else ".")

    def _embedded_summary(self) -> str:
        """What is embedded now: 'Embedded the image.' or '3 slices embedded.'."""
        image = self.controller.image_layer
        if image is None:
            return ""
        count = len(self.controller.cache())
        if len(plane_ops.spatial_shape(image)) == 2:
            return "Embedded the image." if count else "The image is not embedded yet."
        return f"{count} slice{'s' if count != 1 else ''} embedded."

    def _on_embed_worker_finished(self) -> None:
        self._embed_worker = None
        if self._embed_progress is not None:
            self._embed_progress.close()
            self._embed_progress = None
        self.cancel_button.enabled = False
        if self._embed_queue:  # requested after the worker had emptied the queue
            self._start_embed_worker()
            return
        self.controller.clear_pending()
        if self.embed_status.text() == "Embedding failed.":
            return  # keep saying so
        self.embed_status.setText(self._embedded_summary())

    def cancel_embeddings(self) -> None:
        """Stop background embedding after the slice being computed."""
        self._embed_queue.clear()
        if self._embed_worker is not None:
            self._embed_worker.quit()
        self.controller.clear_pending()

    def is_embedding(self) -> bool:
        """True while an embedding worker runs."""
        return self._embed_worker is not None

    def save_embeddings(self, path: str | Path | None = None) -> None:
        """Save the image's embeddings to a zarr folder (asks for it when ``path`` is None)."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save SAM embeddings", "embeddings.zarr", "Zarr (*.zarr)")
            if not path:
                return
        try:
            count = self.controller.save_embeddings(path)
        except USER_ERRORS as err:
            self._report(str(err), error=True)
            return
        self.embed_status.setText(f"{count} embeddings in {path}; new ones are added as computed.")

    def load_embeddings(self, path: str | Path | None = None) -> None:
        """Use embeddings saved earlier (asks for the zarr folder when ``path`` is None)."""
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Load SAM embeddings (a .zarr folder)")
            if not path:
                return
        try:
            count = self.controller.load_embeddings(path)
        except USER_ERRORS as err:
            self._report(str(err), error=True)
            return
        self.embed_status.setText(f"{count} embeddings available from {path}.")

    # ============================================================ actions
    def commit(self) -> None:
        """Commit the preview (as the commit key does), then go back to adding points."""
        try:
            commit_shown(self.controller)  # a propagation shown, else the preview
        except InputError as err:
            self._report(str(err), error=True)

    def _report(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        (show_error if error else show_warning)(text)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.cancel_embeddings()
        self.model_picker.close()
        self.object_list.disconnect_viewer()
        self.propagation_panel.close_panel()
        self.controller.close()
        for signal in (self.controller.status_changed, self.controller.preview_changed, self.controller.plane_changed):
            signal.disconnect()
        for emitter in self._layer_events():
            emitter.disconnect(self._reset_layer_choices)
        action_manager.events.shortcut_changed.disconnect(self._show_shortcuts)
        super().closeEvent(event)
