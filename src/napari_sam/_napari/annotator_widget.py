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
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QGroupBox,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.controller import (
    KEY_BINDINGS,
    KEY_CLEAR,
    KEY_COMMIT,
    KEY_NEXT_CANDIDATE,
    ROLE,
    AnnotatorController,
    PreviewInfo,
)
from napari_sam.engine.errors import InputError
from napari_sam.model.errors import CheckpointError, DownloadError

if TYPE_CHECKING:
    import napari

    from napari_sam._napari.planes import Plane

LOCAL_FILE = "Local checkpoint file..."
DEVICES = ("auto", "cpu", "cuda", "mps")
# Errors with a message written for the user: shown as a notification, not a traceback.
USER_ERRORS = (InputError, CheckpointError, DownloadError, FileNotFoundError)


def model_choices() -> list[str]:
    from napari_sam.model import zoo

    return [*zoo.list_models(), LOCAL_FILE]


def _describe_zoo_model(name: str) -> str:
    from napari_sam.model import zoo

    if name not in zoo.REGISTRY:
        return "Pick a SAM checkpoint file (.pth / .pt); the architecture is detected from its tensors."
    entry = zoo.get_entry(name)
    where = "downloaded" if zoo.is_cached(name) else "downloaded on first use"
    return f"{entry.description} ({where})."


def _load_model_job(name_or_path: str, device: str, precision: str):
    """Load a model and wrap it in a Predictor (worker thread). Returns (predictor, model_id) or an error text."""
    from napari_sam.engine import Predictor
    from napari_sam.model import load_model

    try:
        model = load_model(name_or_path, device=None if device == "auto" else device, progress=False)
        return Predictor(model, device=None if device == "auto" else device, precision=precision), str(name_or_path)
    except USER_ERRORS as err:
        return str(err)


def _section(title: str, *items: widgets.Widget | QWidget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(6, 6, 6, 6)
    for item in items:
        layout.addWidget(item.native if isinstance(item, widgets.Widget) else item)
    return box


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
        self._model_worker = None

        # --- setup
        self.image_choice = widgets.ComboBox(label="Image", choices=self._image_layers)
        self.model_choice = widgets.ComboBox(label="Model", choices=model_choices(), value="vit_t")
        self.model_file = widgets.FileEdit(label="File", mode="r", filter="*.pth *.pt", visible=False)
        self.device_choice = widgets.ComboBox(label="Device", choices=DEVICES, value="auto")
        self.load_button = widgets.PushButton(text="Load model")
        self.model_info = QLabel(_describe_zoo_model("vit_t"))
        self.model_info.setWordWrap(True)
        self.model_status = QLabel("No model loaded.")
        self.model_status.setWordWrap(True)

        # --- embeddings
        self.auto_embed = widgets.CheckBox(text="Embed each slice as I visit it", value=True)
        self.embed_button = widgets.PushButton(text="Embed slice", tooltip="Compute this slice's embedding now")
        self.embed_all_button = widgets.PushButton(
            text="Embed all", tooltip="Compute the embeddings of every slice in the background"
        )
        self.cancel_button = widgets.PushButton(text="Cancel", enabled=False)
        self.save_button = widgets.PushButton(text="Save embeddings...")
        self.load_embeddings_button = widgets.PushButton(text="Load embeddings...")
        self.embed_status = QLabel("")
        self.embed_status.setWordWrap(True)

        # --- annotate
        self.labels_choice = widgets.ComboBox(label="Labels", choices=self._labels_layers, nullable=False)
        self.paint_over = widgets.CheckBox(text="Paint over existing labels", value=False)
        self.commit_button = widgets.PushButton(text=f"Commit ({KEY_COMMIT})")
        self.clear_button = widgets.PushButton(text=f"Clear prompts ({KEY_CLEAR})")
        self.next_button = widgets.PushButton(text=f"Next candidate ({KEY_NEXT_CANDIDATE})")
        self.preview_status = QLabel(PreviewInfo().describe())
        self.preview_status.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        bindings = "".join(
            f"<tr><td><b>{html.escape(key)}</b></td><td>&nbsp;{html.escape(action)}</td></tr>"
            for key, action in KEY_BINDINGS
        )
        self.bindings_label = QLabel(f"<table>{bindings}</table>")
        self.bindings_label.setWordWrap(True)

        self.setMaximumWidth(400)  # leave the canvas most of the window
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(2, 2, 2, 2)
        scroll = QScrollArea()  # a short window scrolls instead of squeezing the controls
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout.addWidget(
            _section(
                "Setup",
                widgets.Container(widgets=[self.image_choice, self.model_choice, self.model_file, self.device_choice]),
                self.model_info,
                self.load_button,
                self.model_status,
            )
        )
        buttons = widgets.Container(
            layout="horizontal", labels=False, widgets=[self.embed_button, self.embed_all_button, self.cancel_button]
        )
        disk = widgets.Container(
            layout="horizontal", labels=False, widgets=[self.save_button, self.load_embeddings_button]
        )
        layout.addWidget(_section("Embeddings", self.auto_embed, buttons, disk, self.embed_status))
        actions = widgets.Container(layout="horizontal", labels=False, widgets=[self.commit_button, self.clear_button])
        layout.addWidget(
            _section(
                "Annotate",
                widgets.Container(widgets=[self.labels_choice]),
                self.paint_over,
                actions,
                self.next_button,
                self.preview_status,
                self.status,
            )
        )
        layout.addWidget(_section("Keys", self.bindings_label))
        layout.addStretch(1)

        # --- connections
        self.image_choice.changed.connect(self._on_image_chosen)
        self.model_choice.changed.connect(self._on_model_choice)
        self.load_button.clicked.connect(self.load_model)
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
        self.controller.status_changed.connect(lambda text: self.status.setText(text))
        self.controller.preview_changed.connect(lambda info: self.preview_status.setText(info.describe()))
        self.controller.plane_changed.connect(self._on_plane_changed)
        layer_events = self.viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.reordered):
            event.connect(self._reset_layer_choices)
        self._plane_timer = QTimer(self)
        self._plane_timer.setSingleShot(True)
        self._plane_timer.setInterval(250)  # do not embed every slice scrolled past
        self._plane_timer.timeout.connect(self._auto_embed_current)

        if self.image_choice.value is not None:
            self._on_image_chosen(self.image_choice.value)

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
        self.image_choice.reset_choices()
        self.labels_choice.reset_choices()
        # a target created by the controller on commit becomes the shown choice
        target = self.controller.labels_layer
        if target is not None and self.labels_choice.value != target:
            self.labels_choice.value = target

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

    def _on_paint_over(self, value: bool) -> None:
        self.controller.paint_over = bool(value)

    def _on_model_choice(self, name: str) -> None:
        self.model_file.visible = name == LOCAL_FILE
        self.model_info.setText(_describe_zoo_model(name))

    # ============================================================== model
    def load_model(self) -> None:
        """Load the chosen zoo model or file in a worker (downloading a zoo model on first use)."""
        name = self.model_choice.value
        source = str(self.model_file.value) if name == LOCAL_FILE else name
        if name == LOCAL_FILE and not Path(source).is_file():
            self._report(f"Choose a checkpoint file first ({source!r} is not a file).")
            return
        self.load_button.enabled = False
        self.model_status.setText(f"Loading {source}...")
        worker = create_worker(
            _load_model_job,
            source,
            self.device_choice.value,
            "auto",
            _progress={"desc": f"Loading SAM model {Path(source).name}"},
        )
        worker.returned.connect(self._on_model_loaded)
        worker.finished.connect(lambda: setattr(self.load_button, "enabled", True))
        self._model_worker = worker
        worker.start()

    def _on_model_loaded(self, result) -> None:
        if isinstance(result, str):
            self.model_status.setText(result)
            self._report(result, error=True)
            return
        predictor, model_id = result
        self.set_predictor(predictor, model_id)

    def set_predictor(self, predictor, model_id: str | None = None) -> None:
        """Use an engine Predictor (e.g. built from a model in memory) for annotation."""
        self.cancel_embeddings()
        self.controller.set_predictor(predictor, model_id)
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

        def guarded_job():
            # a user error (e.g. NaN pixels) ends the run with a message instead of a traceback
            try:
                yield from job()
            except USER_ERRORS as err:
                yield err

        self._embed_progress = progress(total=len(self._embed_queue), desc="SAM image embeddings")
        worker = create_worker(guarded_job)
        worker.yielded.connect(self._on_embedding)
        worker.finished.connect(self._on_embed_worker_finished)
        self._embed_worker = worker
        self.cancel_button.enabled = True
        self.embed_status.setText("Computing embeddings...")
        worker.start()

    def _on_embedding(self, result) -> None:
        if isinstance(result, Exception):
            self._embed_queue.clear()
            self.embed_status.setText("Embedding failed.")
            self._report(str(result), error=True)
            return
        plane, embedding, generation = result
        self.controller.store_embedding(plane, embedding, generation)
        if self._embed_progress is not None:
            self._embed_progress.update(1)
        self.embed_status.setText(f"Embedded {plane.describe()}; {len(self._embed_queue)} queued.")

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
        count = len(self.controller.cache()) if self.controller.image_layer is not None else 0
        self.embed_status.setText(f"{count} slices embedded.")

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
        try:
            self.controller.commit()
        except InputError as err:
            self._report(str(err), error=True)

    def _report(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        (show_error if error else show_warning)(text)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.cancel_embeddings()
        self.controller.close()
        for signal in (self.controller.status_changed, self.controller.preview_changed, self.controller.plane_changed):
            signal.disconnect()
        layer_events = self.viewer.layers.events
        for emitter in (layer_events.inserted, layer_events.removed, layer_events.reordered):
            emitter.disconnect(self._reset_layer_choices)
        super().closeEvent(event)
