"""The "Segment everything" dock widget: automatic, tiled segmentation of the current image.

Pick an image, a model and the parameters, optionally a Shapes layer whose first
rectangle is the region of interest, and press Run. The work runs in a napari
thread worker that yields after every tile (progress bar, Cancel stops between
tiles); the result arrives on the main thread as a new Labels layer aligned with
the image. For a stack, the slice currently shown is segmented.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_sam._napari.annotator_widget import LOCAL_FILE, model_choices
from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    import napari

NO_ROI = "(whole image)"


def plane_and_offset(layer: Image, viewer_point, roi_box=None):
    """The 2D (H, W[, C]) data to segment and where it sits in the layer's data.

    ``viewer_point`` is ``viewer.dims.point`` (world); for stacks the current slice is
    taken (``layer.world_to_data``). ``roi_box`` (row0, row1, col0, col1) in the
    plane's data pixels crops it. Returns (array-like, leading index tuple, (row0, col0)).
    """
    data = layer.data[0] if layer.multiscale else layer.data
    plane_axes = 3 if layer.rgb else 2
    lead_ndim = data.ndim - plane_axes
    lead = ()
    if lead_ndim > 0:
        position = layer.world_to_data(viewer_point)
        lead = tuple(int(np.clip(round(p), 0, s - 1)) for p, s in zip(position[:lead_ndim], data.shape[:lead_ndim]))
    plane = data[lead] if lead else data
    offset = (0, 0)
    if roi_box is not None:
        h, w = plane.shape[:2]
        r0, r1, c0, c1 = roi_box
        r0, r1 = max(0, r0), min(h, r1)
        c0, c1 = max(0, c0), min(w, c1)
        if r1 - r0 < 1 or c1 - c0 < 1:
            raise InputError("The region of interest does not overlap the image.")
        plane = plane[r0:r1, c0:c1]
        offset = (r0, c0)
    return plane, lead, offset


def roi_from_shapes(shapes: Shapes, image: Image) -> tuple[int, int, int, int]:
    """The first shape's bounding box in the image plane's data pixels (row0, row1, col0, col1)."""
    if len(shapes.data) == 0:
        raise InputError(f"The Shapes layer {shapes.name!r} holds no rectangle to use as region of interest.")
    vertices = np.asarray(shapes.data[0], dtype=float)
    world = np.array([shapes.data_to_world(v) for v in vertices])
    data = np.array([image.world_to_data(w) for w in world])
    rows, cols = data[:, -2:].T  # layer dims exclude an RGB channel axis
    return (
        int(np.floor(rows.min() + 0.5)),
        int(np.floor(rows.max() + 0.5)) + 1,
        int(np.floor(cols.min() + 0.5)),
        int(np.floor(cols.max() + 0.5)) + 1,
    )


def segment_everything_job(plane, model, tile_shape, halo, params, device):
    """Worker generator: loads the model if needed, yields (done, total), returns labels."""
    from napari_sam.engine.automatic.segment import segment_everything_steps
    from napari_sam.model import load_model

    if isinstance(model, str):
        model = load_model(model, device=device, progress=False)
    labels = yield from segment_everything_steps(plane, model, tile_shape, halo, params, device=device)
    return labels


class SegmentEverythingWidget(QWidget):
    """Dock widget running ``segment_everything`` on the selected image."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model = None  # a loaded nn.Module overrides the model choice (used by scripts and tests)
        self.worker = None
        self._progress = None

        self.image_choice = widgets.ComboBox(label="image", choices=self._image_layers)
        self.model_choice = widgets.ComboBox(label="model", choices=model_choices(), value="vit_t")
        self.checkpoint = widgets.FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth")
        self.tile_size = widgets.SpinBox(label="tile size (0: model input)", value=0, min=0, max=16384, step=64)
        self.halo = widgets.SpinBox(label="halo (0: tile / 8)", value=0, min=0, max=4096)
        self.points_per_side = widgets.SpinBox(label="points per side", value=32, min=1, max=128)
        self.pred_iou_thresh = widgets.FloatSpinBox(label="predicted IoU", value=0.88, min=0.0, max=1.0, step=0.01)
        self.stability_thresh = widgets.FloatSpinBox(label="stability", value=0.95, min=0.0, max=1.0, step=0.01)
        self.min_area = widgets.SpinBox(label="min area (px)", value=0, min=0, max=1_000_000)
        self.nested_thresh = widgets.FloatSpinBox(
            label="nested masks (0: keep)", value=0.0, min=0.0, max=1.0, step=0.05
        )
        self.roi_choice = widgets.ComboBox(label="region of interest", choices=self._roi_choices)
        self.run_button = widgets.PushButton(text="Run")
        self.cancel_button = widgets.PushButton(text="Cancel", enabled=False)
        self.status = widgets.Label(value="")
        container = widgets.Container(
            widgets=[
                self.image_choice,
                self.model_choice,
                self.checkpoint,
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
        layout.addWidget(container.native)
        layout.addStretch()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)

    # ----------------------------------------------------------------- choices
    def _image_layers(self, _widget=None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _roi_choices(self, _widget=None) -> list:
        return [NO_ROI, *[layer for layer in self.viewer.layers if isinstance(layer, Shapes)]]

    def _refresh_choices(self, _event=None) -> None:
        self.image_choice.reset_choices()
        self.roi_choice.reset_choices()

    def _model_argument(self):
        if self.model is not None:
            return self.model
        if self.model_choice.value == LOCAL_FILE:
            path = str(self.checkpoint.value)
            if not path or path == ".":
                raise InputError("Choose a checkpoint file for the local model.")
            return path
        return self.model_choice.value

    # ----------------------------------------------------------------- running
    def run(self, synchronous: bool = False):
        """Start segmenting; ``synchronous`` runs in this thread and returns the new layer (scripts, tests)."""
        from napari_sam.engine.automatic.generation import AutomaticParams

        image = self.image_choice.value
        if image is None:
            show_error("Add an image layer first.")
            return None
        try:
            roi = self.roi_choice.value
            box = roi_from_shapes(roi, image) if isinstance(roi, Shapes) else None
            plane, lead, offset = plane_and_offset(image, self.viewer.dims.point, box)
            params = AutomaticParams(
                points_per_side=self.points_per_side.value,
                pred_iou_thresh=self.pred_iou_thresh.value,
                stability_thresh=self.stability_thresh.value,
                min_area=self.min_area.value,
                nested_thresh=self.nested_thresh.value or None,
            )
            params.validate()
            model = self._model_argument()
        except InputError as err:
            show_error(str(err))
            return None
        tile = self.tile_size.value or None
        halo = self.halo.value or None
        job = segment_everything_job(plane, model, tile, halo, params, None)
        context = (image, lead, offset)
        if synchronous:
            try:
                while True:
                    next(job)
            except StopIteration as stop:
                return self._add_labels(stop.value, context)
        self.worker = create_worker(lambda: (yield from job))
        self._progress = progress(total=0, desc="Segment everything")
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda labels: self._add_labels(labels, context))
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running..."
        self.worker.start()
        return None

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelled"

    def _on_progress(self, step) -> None:
        done, total = step
        if self._progress is not None:
            self._progress.total = total
            self._progress.n = done
            self._progress.refresh()
        self.status.value = f"tile {done} / {total}"

    def _on_error(self, err) -> None:
        show_error(f"Segment everything failed: {err}")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.worker = None

    def _add_labels(self, labels, context):
        image, lead, offset = context
        labels = np.asarray(labels)
        # place the plane (or ROI) where it sits in the image: same scale, translated by the offset
        scale = np.asarray(image.scale)
        translate = np.asarray(image.translate, dtype=float).copy()
        plane_dims = [image.ndim - 2, image.ndim - 1]  # layer dims exclude an RGB channel axis
        lead_dims = list(range(len(lead)))
        translate[lead_dims] += np.asarray(lead) * scale[lead_dims]
        translate[plane_dims] += np.asarray(offset) * scale[plane_dims]
        keep = lead_dims + plane_dims
        layer = self.viewer.add_labels(
            labels[(None,) * len(lead)] if lead else labels,
            name=f"{image.name} everything",
            scale=scale[keep],
            translate=translate[keep],
        )
        count = int(labels.max()) if labels.size else 0
        self.status.value = f"{count} objects"
        show_info(f"Segment everything: {count} objects.")
        return layer
