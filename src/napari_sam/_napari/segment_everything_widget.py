"""The "Segment everything" dock widget: automatic, tiled segmentation of the plane on screen.

Pick an image, a model and the parameters, optionally a Shapes layer whose first
rectangle is the region of interest, and press Run. The plane segmented is the one
the viewer shows when Run is pressed, chosen by :mod:`.planes` as for the annotator
(``dims.order`` and the displayed axes honoured). The model is loaded once and
shared with the annotator (:mod:`.model_picker`). The work runs in a napari thread
worker that yields after every tile (progress bar; Cancel stops between tiles); the
result arrives on the main thread as a new Labels layer over that plane (or region),
aligned with the image. The parameters' defaults and tooltips are those of
:class:`~napari_sam.engine.automatic.params.AutomaticParams`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.model_picker import USER_ERRORS, LoadedModel, ModelPicker
from napari_sam.engine.automatic.params import AutomaticParams
from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    import napari

    from napari_sam._napari.planes import Box, Plane

NO_ROI = "(whole image)"


@dataclass(frozen=True)
class Target:
    """What one run segments: ``box`` (data pixels of ``plane``) of ``image``'s ``plane``."""

    image: Image
    plane: Plane
    box: Box  # (row0, row1, col0, col1), half-open, inside the plane

    def pixels(self):
        """The region's pixels (h, w[, C]) as the layer's array type (not read yet)."""
        return plane_ops.plane_region(self.image, self.plane, self.box)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, whitespace collapsed ({} when the source is unavailable)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def roi_box(viewer, shapes: Shapes, image: Image, plane: Plane) -> Box:
    """The first shape's bounding box in ``plane``'s data pixels (row0, row1, col0, col1), clipped to the plane.

    Parameters
    ----------
    viewer
        The viewer; a Shapes layer with fewer dimensions than it lies on its last
        axes, and its vertices take the viewer's current point on the others.
    shapes
        The layer whose first shape is the region of interest.
    image
        The image layer being segmented.
    plane
        The plane of ``image`` that is segmented (see :func:`~.planes.current_plane`).

    Raises
    ------
    InputError
        When the layer holds no shape, or the shape misses the plane.
    """
    if len(shapes.data) == 0:
        raise InputError(f"The Shapes layer {shapes.name!r} holds no rectangle to use as region of interest.")
    point = np.asarray(viewer.dims.point, dtype=float)
    corners = []
    for vertex in np.asarray(shapes.data[0], dtype=float):
        world = point.copy()
        world[len(point) - shapes.ndim :] = shapes.data_to_world(vertex)
        corners.append(np.asarray(image.world_to_data(world), dtype=float))
    data = np.array(corners)  # layer dims exclude an RGB channel axis
    rows, cols = data[:, plane.axes[0]], data[:, plane.axes[1]]
    box = (
        int(np.floor(rows.min() + 0.5)),
        int(np.floor(rows.max() + 0.5)) + 1,
        int(np.floor(cols.min() + 0.5)),
        int(np.floor(cols.max() + 0.5)) + 1,
    )
    return plane_ops.clip_box(box, plane_ops.plane_shape(image, plane))


def segment_job(
    pixels, loaded: LoadedModel, tile_shape: int | None, halo: int | None, params: AutomaticParams
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Worker generator: yields (tiles done, tiles total), returns the (h, w) int32 labels of ``pixels``.

    Parameters
    ----------
    pixels
        The region to segment, (h, w) or (h, w, C), any array type (read tile by tile).
    loaded
        The model and the device it was loaded for.
    tile_shape, halo
        Tile side and halo in pixels; None: the model's input size, and tile / 8.
    params
        The automatic-segmentation settings.
    """
    from napari_sam.engine.automatic.segment import segment_everything_steps

    labels = yield from segment_everything_steps(
        pixels, loaded.model, tile_shape=tile_shape, halo=halo, params=params, device=loaded.key.torch_device
    )
    return labels


class SegmentEverythingWidget(QWidget):
    """Dock widget running ``segment_everything`` on the plane of the selected image that the viewer shows."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model_picker = ModelPicker(napari_viewer, file_label="Checkpoint")
        self.model_choice = self.model_picker.model_choice
        self.model_file = self.model_picker.model_file
        self.device_choice = self.model_picker.device_choice
        self._worker = None
        self._progress: progress | None = None
        self._viewer_connected = False
        self._build_fields()
        self._build_layout()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.model_picker.busy_changed.connect(self._update_buttons)
        self._connect_viewer()

    def _build_fields(self) -> None:
        defaults, docs = AutomaticParams(), field_docs(AutomaticParams)
        self.image_choice = widgets.ComboBox(label="Image", choices=self._image_layers)
        self.tile_size = widgets.SpinBox(label="Tile size (0: model input)", value=0, min=0, max=16384, step=64)
        self.halo = widgets.SpinBox(label="Halo (0: tile / 8)", value=0, min=0, max=4096)
        self.points_per_side = widgets.SpinBox(
            label="Points per side", value=defaults.points_per_side, min=1, max=128, tooltip=docs.get("points_per_side")
        )
        fraction = {"min": 0.0, "max": 1.0, "step": 0.01}
        self.pred_iou_thresh = widgets.FloatSpinBox(
            label="Predicted IoU", value=defaults.pred_iou_thresh, tooltip=docs.get("pred_iou_thresh"), **fraction
        )
        self.stability_thresh = widgets.FloatSpinBox(
            label="Stability", value=defaults.stability_thresh, tooltip=docs.get("stability_thresh"), **fraction
        )
        self.min_area = widgets.SpinBox(
            label="Min area (px)", value=defaults.min_area, min=0, max=1_000_000, tooltip=docs.get("min_area")
        )
        self.nested_thresh = widgets.FloatSpinBox(
            label="Nested masks (0: keep)",
            value=defaults.nested_thresh or 0.0,  # None (off) is shown as 0
            tooltip=docs.get("nested_thresh"),
            **{**fraction, "step": 0.05},
        )
        self.roi_choice = widgets.ComboBox(label="Region of interest", choices=self._roi_choices)
        self.run_button = widgets.PushButton(text="Run")
        self.cancel_button = widgets.PushButton(text="Cancel", enabled=False)
        self.status = widgets.Label(value="")

    def _build_layout(self) -> None:
        form = widgets.Container(
            widgets=[
                self.image_choice,
                *self.model_picker.widgets,
                self.tile_size,
                self.halo,
                self.points_per_side,
                self.pred_iou_thresh,
                self.stability_thresh,
                self.min_area,
                self.nested_thresh,
                self.roi_choice,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        layout = QVBoxLayout(self)
        layout.addWidget(form.native)
        layout.addWidget(self.model_picker.info)
        layout.addWidget(self.model_picker.status)
        layout.addStretch()

    # ----------------------------------------------------------------- choices
    def _image_layers(self, _widget=None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _roi_choices(self, _widget=None) -> list:
        return [NO_ROI, *[layer for layer in self.viewer.layers if isinstance(layer, Shapes)]]

    def _refresh_choices(self, _event=None) -> None:
        self.image_choice.reset_choices()
        self.roi_choice.reset_choices()

    # ------------------------------------------------- viewer connections
    def _connect_viewer(self) -> None:
        if not self._viewer_connected:
            events = self.viewer.layers.events
            for emitter in (events.inserted, events.removed):
                emitter.connect(self._refresh_choices)
            self._viewer_connected = True
            self._refresh_choices()  # layers may have changed while disconnected

    def _disconnect_viewer(self) -> None:
        if self._viewer_connected:
            events = self.viewer.layers.events
            for emitter in (events.inserted, events.removed):
                emitter.disconnect(self._refresh_choices)
            self._viewer_connected = False

    def showEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self._connect_viewer()
        super().showEvent(event)

    def hideEvent(self, event) -> None:  # noqa: N802 (Qt name)
        # napari hides a dock's widget when the dock is closed or removed; a minimised window is spontaneous
        if not event.spontaneous():
            self._disconnect_viewer()
        super().hideEvent(event)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.cancel()
        self._disconnect_viewer()
        super().closeEvent(event)

    # ----------------------------------------------------------------- running
    def run(self) -> None:
        """Segment the plane on screen (or its region of interest): load the model if needed, then in a worker."""
        if self.is_busy():
            return
        try:
            target, params = self._target(), self._params()
            self.model_picker.request(lambda loaded: self._start(loaded, target, params))
        except USER_ERRORS as err:
            self._report(str(err))

    def is_busy(self) -> bool:
        """True while the model loads or a segmentation runs."""
        return self.model_picker.is_loading() or self._worker is not None

    def cancel(self) -> None:
        """Stop loading the model, or stop segmenting after the tile being computed."""
        if self.model_picker.cancel() or self._worker is not None:
            if self._worker is not None:
                self._worker.quit()
            self.status.value = "cancelled"

    def _target(self) -> Target:
        image = self.image_choice.value
        if image is None:
            raise InputError("Add an image layer first.")
        plane = plane_ops.current_plane(self.viewer, image)
        roi = self.roi_choice.value
        if isinstance(roi, Shapes):
            return Target(image, plane, roi_box(self.viewer, roi, image, plane))
        height, width = plane_ops.plane_shape(image, plane)
        return Target(image, plane, (0, height, 0, width))

    def _params(self) -> AutomaticParams:
        params = AutomaticParams(
            points_per_side=self.points_per_side.value,
            pred_iou_thresh=self.pred_iou_thresh.value,
            stability_thresh=self.stability_thresh.value,
            min_area=self.min_area.value,
            nested_thresh=self.nested_thresh.value or None,
        )
        params.validate()
        return params

    def _start(self, loaded: LoadedModel, target: Target, params: AutomaticParams) -> None:
        worker = create_worker(
            segment_job,
            target.pixels(),
            loaded,
            self.tile_size.value or None,
            self.halo.value or None,
            params,
            _start_thread=False,
            _connect={"errored": self._on_error},  # user errors are notifications, not re-raised
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda labels: self._add_labels(labels, target))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._progress = progress(total=0, desc="Segment everything")
        self.status.value = f"running on {target.plane.describe()}..."
        self._update_buttons()
        worker.start()

    def _update_buttons(self, _busy: bool | None = None) -> None:
        busy = self.is_busy()
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy

    def _on_progress(self, step: tuple[int, int]) -> None:
        if self._worker is None or self._worker.abort_requested:
            return  # a tile that was queued before Cancel
        done, total = step
        if self._progress is not None:
            self._progress.total = total
            self._progress.n = done
            self._progress.refresh()
        self.status.value = f"tile {done} / {total}"

    def _on_error(self, err: Exception) -> None:
        if not isinstance(err, USER_ERRORS):
            raise err  # a bug: napari shows the traceback (and a test fails)
        self._report(f"Segment everything failed: {err}")

    def _report(self, text: str) -> None:
        self.status.value = text
        show_error(text)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        self._update_buttons()

    def _add_labels(self, labels, target: Target):
        """Add ``labels`` (h, w) as a Labels layer over the target region, aligned with the image."""
        labels = np.asarray(labels)
        image, plane, box = target.image, target.plane, target.box
        layer = self.viewer.add_labels(
            labels.reshape(plane_ops.one_plane_shape(image, plane, labels.shape)),
            name=f"{image.name} everything",
            **plane_ops.one_plane_transform(image, plane, corner=(box[0], box[2])),
        )
        count = int(labels.max()) if labels.size else 0
        self.status.value = f"{count} objects"
        show_info(f"Segment everything: {count} objects.")
        return layer
