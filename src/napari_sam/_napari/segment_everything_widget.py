"""The "Segment everything" dock widget: automatic, tiled segmentation of the plane on screen.

Pick an image, a model and the parameters, optionally a Shapes layer whose first
rectangle is the region of interest, and press Run. The plane segmented is the one
the viewer shows when Run is pressed, chosen by :mod:`.planes` as for the annotator
(``dims.order`` and the displayed axes honoured); "All planes" segments every plane
of a 3D stack instead, ids unique across planes. The model is loaded once and
shared with the annotator (:mod:`.model_picker`). The work runs in a napari thread
worker that yields after every tile (progress bar; Cancel stops between tiles); the
result arrives on the main thread as a new Labels layer over that plane (or region,
or stack), aligned with the image. Any error in the worker becomes a notification
and leaves the widget usable (:func:`.workers.guarded`).

After each run the widget says what each filter rejected and which thresholds to try
(:class:`~napari_sam.engine.automatic.diagnostics.FilterReport`); Preview segments
one tile-sized region at the centre of the view (or of the region of interest) in
seconds, into a "preview" Labels layer, so the thresholds can be tuned before a long
run. The parameters' defaults and tooltips are those of
:class:`~napari_sam.engine.automatic.params.AutomaticParams`; the rarely changed ones
sit in a collapsed "Advanced" section, to leave the annotator its height.

"Method" chooses how tiles are segmented: the model's instance decoder (one decoder pass
and a seeded watershed per tile: seconds) or automatic masks from a grid of SAM prompts.
It follows the model (the decoder when it has one) until the user picks one; only the
chosen method's settings are shown (instance thresholds from
``napari_sam.engine.automatic.instance.InstanceParams``).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_sam._napari import planes as plane_ops
from napari_sam._napari import volume_segmentation
from napari_sam._napari.dock_layout import (
    DOCK_MAX_WIDTH,
    DOCK_MIN_WIDTH,
    scrolling_column,
)
from napari_sam._napari.model_picker import (
    USER_ERRORS,
    LoadedModel,
    ModelPicker,
    viewer_models,
)
from napari_sam._napari.window_picker import WindowPicker, connect_segment_everything
from napari_sam._napari.workers import guarded, original_error
from napari_sam.engine.automatic.diagnostics import FilterReport
from napari_sam.engine.automatic.params import (
    AutomaticParams,
    has_instance_decoder,
    resolve_method,
)
from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    import napari

    from napari_sam._napari.planes import Box, Plane
    from napari_sam.engine.automatic.instance import InstanceParams

NO_ROI = "(whole image)"
# the Method choice: (what the user reads, the engine's method)
METHOD_CHOICES = (("Instance decoder (fast)", "instance"), ("Automatic masks (SAM prompts)", "amg"))
# the instance-mode settings shown: (InstanceParams field, label, in the collapsed Advanced section)
INSTANCE_FIELDS = (
    ("foreground_threshold", "Foreground", False),
    ("center_distance_threshold", "Centre distance", False),
    ("boundary_distance_threshold", "Boundary distance", False),
    ("foreground_smoothing", "Foreground smoothing", True),
    ("distance_smoothing", "Distance smoothing", True),
    ("min_size", "Min size (px)", True),
)
COMPACT_HEIGHT = 420  # the dock's preferred height: fields and buttons, the rest scrolls
MIN_HEIGHT = 260  # the least it shrinks to beside the annotator (both scroll below that)
PREVIEW_SIZE = 384  # the preview's side in pixels (at most one tile): seconds, not minutes
# errors a run can meet without a bug: shown as a notification (torch's out-of-memory and a
# failed download are RuntimeErrors, a full disk an OSError); anything else is re-raised
RUN_ERRORS = (*USER_ERRORS, RuntimeError, MemoryError, OSError)


@dataclass(frozen=True)
class Target:
    """What one run segments: ``box`` (data pixels of ``plane``) of ``image``'s ``plane``.

    With ``stack_axis`` set (a 3D image), the same box of every plane along that axis.
    """

    image: Image
    plane: Plane
    box: Box  # (row0, row1, col0, col1), half-open, inside the plane
    stack_axis: int | None = None

    def pixels(self):
        """The region's pixels (h, w[, C]), or (Z, h, w[, C]) over all planes, as the layer's array type."""
        if self.stack_axis is None:
            return plane_ops.plane_region(self.image, self.plane, self.box)
        rows, cols = slice(self.box[0], self.box[1]), slice(self.box[2], self.box[3])
        data = plane_ops.base_data(self.image)
        # (Z, rows, cols[, C]) in the plane's orientation: moveaxis stays lazy for dask arrays
        order = [self.stack_axis, *self.plane.axes, *range(3, data.ndim)]
        data = data if order == list(range(data.ndim)) else np.moveaxis(data, order, list(range(data.ndim)))
        return data[:, rows, cols]

    def layer_data(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` (h, w) or (Z, h, w) laid out on the image's axes."""
        if self.stack_axis is None:
            return labels.reshape(plane_ops.one_plane_shape(self.image, self.plane, labels.shape))
        return np.moveaxis(labels, [0, 1, 2], [self.stack_axis, *self.plane.axes])

    def transform(self) -> dict:
        """``add_labels`` keywords putting the labels' first pixel on the region's corner (first plane)."""
        plane = self.plane if self.stack_axis is None else plane_ops.Plane(self.plane.axes, ((self.stack_axis, 0),))
        return plane_ops.one_plane_transform(self.image, plane, corner=(self.box[0], self.box[2]))


@dataclass(frozen=True)
class Job:
    """One press of Run or Preview: what to segment and how."""

    target: Target
    params: AutomaticParams
    tile_shape: int | None
    halo: int | None
    preview: bool = False
    link_planes: bool = False  # Segment volume: the planes' masks linked into 3D objects
    method: str | None = None  # "instance", "amg", or None: what the model supports best (resolve_method)
    instance_params: InstanceParams | None = None


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


def view_centre(viewer, image: Image, plane: Plane) -> tuple[float, float]:
    """The (row, col) in ``plane``'s data pixels under the centre of the canvas."""
    world = np.asarray(viewer.dims.point, dtype=float)
    displayed = list(viewer.dims.displayed)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 / older
    world[displayed] = np.asarray(camera.center, dtype=float)[-len(displayed) :]
    data = np.asarray(image.world_to_data(world[len(world) - image.ndim :]), dtype=float)
    return float(data[plane.axes[0]]), float(data[plane.axes[1]])


def centred_box(centre: tuple[float, float], side: int, bounds: Box) -> Box:
    """A square of ``side`` pixels around ``centre``, moved (and cut) to lie inside ``bounds``."""
    box = []
    for c, (low, high) in zip(centre, ((bounds[0], bounds[1]), (bounds[2], bounds[3]))):
        extent = min(side, high - low)
        first = int(np.clip(round(c) - extent // 2, low, high - extent))
        box.extend((first, first + extent))
    return tuple(box)


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
    pixels, loaded: LoadedModel, tile_shape: int | None, halo: int | None, params: AutomaticParams,
    report: FilterReport | None = None, method: str = "amg", instance_params: InstanceParams | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Worker generator: yields (tiles done, tiles total), returns the int32 labels of ``pixels``.

    Parameters
    ----------
    pixels
        The region to segment, (h, w), (h, w, C) or a stack (Z, h, w[, C]), any array type (read tile by tile).
    loaded
        The model and the device it was loaded for.
    tile_shape, halo
        Tile side and halo in pixels; None: the model's input size, and tile / 8.
    params
        The automatic-segmentation settings.
    report
        Filled with what each filter rejected (method "amg").
    method
        "instance" (the model's instance decoder) or "amg" (automatic masks from SAM prompts).
    instance_params
        The instance-mode settings.
    """
    from napari_sam.engine.automatic import segment

    labels = yield from segment.segment_everything_steps(
        pixels, loaded.model, tile_shape=tile_shape, halo=halo, params=params, device=loaded.key.torch_device,
        report=report, method=method, instance_params=instance_params,
    )
    return labels


def preview_job(
    pixels, loaded: LoadedModel, box: Box, tile_shape: int | None, params: AutomaticParams, report: FilterReport,
    method: str = "amg", instance_params: InstanceParams | None = None,
) -> Generator[tuple[int, int], None, tuple[Box, np.ndarray]]:
    """Worker generator: segments ``box`` of the plane ``pixels`` (one tile), returns (region, labels).

    Parameters
    ----------
    pixels
        The whole plane (H, W[, C]), read only around ``box``.
    loaded
        The model and the device it was loaded for.
    box
        The region to preview, in the plane's pixels.
    tile_shape
        The full run's tile side (None: the model's input size): the scale the model sees.
    params
        The automatic-segmentation settings.
    report
        Filled with what each filter rejected (method "amg").
    method, instance_params
        ``"amg"`` or ``"instance"`` (the model's decoder), and the instance-mode settings.
    """
    from napari_sam.engine.automatic.preview import preview_labels

    yield 0, 1
    result = preview_labels(pixels, loaded.model, box, tile_shape, params, loaded.key.torch_device, report,
                            method=method, instance_params=instance_params)
    yield 1, 1
    return result


class SegmentEverythingWidget(QWidget):
    """Dock widget running ``segment_everything`` on the plane of the selected image that the viewer shows."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model_picker = ModelPicker(napari_viewer, file_label="Checkpoint", decoder=True)
        self.model_choice = self.model_picker.model_choice
        self.model_file = self.model_picker.model_file
        self.device_choice = self.model_picker.device_choice
        self._worker = None
        self._progress: progress | None = None
        self._step = (0, 0)  # the last (tiles done, tiles total) of the running job
        self._unit = "tile"  # what a step is: a tile, or a slice when linking planes
        self._started = 0.0
        self._suggestion: dict[str, float] = {}
        self._viewer_connected = False
        self._method_picked = False  # the user chose a method: it no longer follows the model
        self._showing_default = False
        self._build_fields()
        self._build_layout()
        self.run_button.clicked.connect(self.run)
        self.preview_button.clicked.connect(self.preview)
        self.cancel_button.clicked.connect(self.cancel)
        self.apply_button.clicked.connect(self.apply_suggestion)
        self.image_choice.changed.connect(self._update_stack_choice)
        self.method.changed.connect(self._on_method_changed)
        self.model_picker.model_choice.changed.connect(self._show_default_method)
        self.model_picker.model_file.changed.connect(self._show_default_method)
        self.model_picker.decoder_file.changed.connect(self._show_default_method)
        self.model_picker.busy_changed.connect(self._update_buttons)
        self._connect_viewer()
        connect_segment_everything(self.window_picker, self)

    def _build_fields(self) -> None:
        self.window_picker = WindowPicker()  # the intensity window every tile and plane is scaled with
        defaults, docs = AutomaticParams(), field_docs(AutomaticParams)
        self.image_choice = widgets.ComboBox(
            label="Image", choices=self._image_layers, tooltip="The image layer to segment"
        )
        self.tile_size = widgets.SpinBox(
            label="Tile size (0: model input)", value=0, min=0, max=16384, step=64,
            tooltip="Side of the windows the model sees, in pixels; 0: the model's input size (1024 for SAM)",
        )
        self.halo = widgets.SpinBox(
            label="Halo (0: tile / 8)", value=0, min=0, max=4096,
            tooltip="Overlap of neighbouring tiles, in pixels: objects up to about this size are never cut by a seam",
        )
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
        self.roi_choice = widgets.ComboBox(
            label="Region of interest", choices=self._roi_choices,
            tooltip="A Shapes layer whose first rectangle limits the run (and centres the preview)",
        )
        self.all_planes = widgets.CheckBox(
            text="All planes", value=False, enabled=False,
            tooltip="Segment every plane of a 3D stack (ids unique across planes), not only the plane on screen",
        )
        self.link_planes = volume_segmentation.link_planes_checkbox(self.all_planes)
        self.preview_button = widgets.PushButton(text="Preview")
        self.preview_button.tooltip = (
            f"Segment a {PREVIEW_SIZE}-pixel region at the centre of the view (or of the region of interest) "
            "in seconds, to tune the thresholds before a long run"
        )
        self.run_button = widgets.PushButton(text="Run", tooltip="Segment the plane on screen (or its region)")
        self.cancel_button = widgets.PushButton(text="Cancel", enabled=False, tooltip="Stop after the current tile")
        self.apply_button = widgets.PushButton(
            text="Use suggested thresholds", visible=False, tooltip="Set the thresholds the last report suggests"
        )
        self.status = widgets.Label(value="")
        self.report = wrapping_label("")
        self._build_method_fields()

    def _build_method_fields(self) -> None:
        """The Method choice and the instance-mode settings (defaults and tooltips from ``InstanceParams``)."""
        from napari_sam.engine.automatic.instance import InstanceParams

        self.method = widgets.ComboBox(
            label="Method", choices=list(METHOD_CHOICES), value=self._default_method(),
            tooltip="Instance decoder: the model's decoder predicts foreground and distance maps, a watershed "
            "splits them into objects (one pass per tile: fast; needs a model with a decoder, e.g. vit_b_lm). "
            "Automatic masks: SAM decodes a grid of point prompts per tile (slower, any model).",
        )
        defaults, docs = InstanceParams(), field_docs(InstanceParams)
        self.instance_fields = {}
        for name, label, _ in INSTANCE_FIELDS:
            value = getattr(defaults, name)
            if isinstance(value, int) and not isinstance(value, bool):
                field = widgets.SpinBox(label=label, value=value, min=0, max=1_000_000, tooltip=docs.get(name))
            else:
                field = widgets.FloatSpinBox(
                    label=label, value=value, min=0.0, max=1.0 if "threshold" in name else 10.0, step=0.05,
                    tooltip=docs.get(name),
                )
            self.instance_fields[name] = field
        self.amg_fields = [self.points_per_side, self.pred_iou_thresh, self.stability_thresh, self.min_area,
                           self.nested_thresh]
    def _build_layout(self) -> None:
        shown = [self.instance_fields[name] for name, _, folded in INSTANCE_FIELDS if not folded]
        folded = [self.instance_fields[name] for name, _, folded in INSTANCE_FIELDS if folded]
        form = widgets.Container(
            widgets=[
                self.image_choice, *self.window_picker.widgets, *self.model_picker.widgets, self.method, *shown,
                self.points_per_side, self.pred_iou_thresh, self.stability_thresh, self.roi_choice,
            ]
        )
        advanced = QCollapsible("Advanced")
        advanced.addWidget(
            widgets.Container(widgets=[self.tile_size, self.halo, self.min_area, self.nested_thresh, *folded]).native
        )
        advanced.collapse(animate=False)
        self.advanced = advanced
        buttons = QHBoxLayout()
        for button in (self.preview_button, self.run_button, self.cancel_button):
            buttons.addWidget(button.native)
        make_wrapping(self.status.native)
        # the settings in a scroll area, as the annotator's: docked together, both keep a share of the
        # height; the buttons, the status and the last run's report stay in sight below it
        self.setMaximumWidth(DOCK_MAX_WIDTH)
        self.setMinimumWidth(DOCK_MIN_WIDTH)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 0, 8, 4)
        outer.addWidget(
            scrolling_column(
                form.native, advanced, self.all_planes.native, self.link_planes.native, self.model_picker.info,
                self.model_picker.status,
            )
        )
        outer.addLayout(buttons)
        for widget in (self.status.native, self.report, self.apply_button.native):
            outer.addWidget(widget)
        self._show_method_fields()

    # ------------------------------------------------------------------ method
    def _default_method(self, model=None) -> str:
        """The method for ``model`` (or, before it is loaded, the chosen zoo entry): the decoder when there is one."""
        if model is None:
            if self.model_picker.decoder_chosen():
                return "instance"  # a decoder file entered with the checkpoint
            try:  # loaded already, by this widget or another of the viewer
                model = viewer_models(self.viewer).get(self.model_picker.key())
            except InputError:  # no checkpoint file chosen yet
                model = None
        if model is None:
            from napari_sam.model import zoo

            entry = zoo.REGISTRY.get(self.model_picker.model_choice.value)
            return "instance" if entry is not None and getattr(entry, "has_decoder", False) else "amg"
        return "instance" if has_instance_decoder(model) else "amg"

    def _show_default_method(self, _value=None, model=None) -> None:
        """Show the model's method, unless the user picked one."""
        if self._method_picked:
            return
        self._showing_default = True
        try:
            self.method.value = self._default_method(model)
        finally:
            self._showing_default = False
        self._show_method_fields()

    def _on_method_changed(self, _value=None) -> None:
        if not self._showing_default:
            self._method_picked = True
        self._show_method_fields()

    def _show_method_fields(self) -> None:
        """Only the chosen method's settings (the AMG report and its suggestion only after an AMG run)."""
        instance = self.method.value == "instance"
        for field in self.instance_fields.values():
            field.visible = instance
        for field in self.amg_fields:
            field.visible = not instance
        if instance:
            self.apply_button.visible = False

    def _instance_params(self) -> InstanceParams:
        from napari_sam.engine.automatic.instance import InstanceParams

        params = InstanceParams(**{name: field.value for name, field in self.instance_fields.items()})
        params.validate()
        return params

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """The form's height up to Run and the status, not the report and model notes below (they scroll)."""
        hint = super().sizeHint()
        return QSize(hint.width(), min(hint.height(), COMPACT_HEIGHT))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        """Tall enough for the image, model and the first fields: docked under the annotator, both keep a share."""
        hint = super().minimumSizeHint()
        return QSize(hint.width(), max(hint.height(), MIN_HEIGHT))

    # ----------------------------------------------------------------- choices
    def _image_layers(self, _widget=None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _roi_choices(self, _widget=None) -> list:
        return [NO_ROI, *[layer for layer in self.viewer.layers if isinstance(layer, Shapes)]]

    def _refresh_choices(self, _event=None) -> None:
        self.image_choice.reset_choices()
        self.roi_choice.reset_choices()
        self._update_stack_choice()

    def _update_stack_choice(self, _value=None) -> None:
        """"All planes" only for a 3D image (one axis besides the two shown)."""
        image = self.image_choice.value
        stack = image is not None and len(plane_ops.spatial_shape(image)) == 3
        self.all_planes.enabled = self.link_planes.enabled = stack
        if not stack:
            self.all_planes.value = False

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
        """Segment the plane on screen (or its region, or all planes): load the model if needed, then in a worker."""
        self._launch(preview=False)

    def preview(self) -> None:
        """Segment a small region at the centre of the view (or of the region of interest) into a preview layer."""
        self._launch(preview=True)

    def _launch(self, preview: bool) -> None:
        if self.is_busy():
            return
        try:
            job = self._job(preview)
            self.model_picker.request(lambda loaded: self._start(loaded, job))
        except USER_ERRORS as err:
            self._report(str(err))

    def is_busy(self) -> bool:
        """True while the model loads or a segmentation runs."""
        return self.model_picker.is_loading() or self._worker is not None

    def cancel(self) -> None:
        """Stop loading the model, or stop segmenting after the tile being computed."""
        if self._worker is not None:
            self._worker.quit()
            done, total = self._step
            self.status.value = f"Cancelled after {done} of {total} {self._unit}s." if total else "Cancelled."
        elif self.model_picker.cancel():
            self.status.value = "Cancelled while loading the model."

    def _job(self, preview: bool) -> Job:
        target, params = self._target(), self._params()
        if preview:
            target = Target(target.image, target.plane, self._preview_box(target))
        elif self.all_planes.value:
            stack_axis = next(axis for axis in range(3) if axis not in target.plane.axes)
            target = Target(target.image, target.plane, target.box, stack_axis)
        link = target.stack_axis is not None and self.link_planes.value
        method = self.method.value if self._method_picked else None  # None: the loaded model decides
        return Job(target, params, self.tile_size.value or None, self.halo.value or None, preview, link, method,
                   self._instance_params())

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

    def _preview_box(self, target: Target) -> Box:
        """A square of at most PREVIEW_SIZE pixels at the centre of the view (or of the region of interest)."""
        box = target.box
        if isinstance(self.roi_choice.value, Shapes):
            centre = ((box[0] + box[1]) / 2, (box[2] + box[3]) / 2)
        else:
            centre = view_centre(self.viewer, target.image, target.plane)
        return centred_box(centre, PREVIEW_SIZE, box)

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

    def _start(self, loaded: LoadedModel, job: Job) -> None:
        try:
            method = resolve_method(job.method, loaded.model)
        except InputError as err:
            self._report(str(err))
            return
        self._show_default_method(model=loaded.model)
        if job.link_planes:  # linking planes segments them with automatic masks (engine.volume)
            method = "amg"
        job = Job(job.target, job.params, job.tile_shape, job.halo, job.preview, job.link_planes, method,
                  job.instance_params)
        report = FilterReport()
        target = job.target
        if job.preview:  # the whole plane (not read) goes to the engine: the preview encodes a tile around the box
            plane = self.window_picker.windowed(target.image, plane_ops.plane_region(target.image, target.plane))
            args = (preview_job, plane, loaded, target.box, job.tile_shape, job.params, report, method,
                    job.instance_params)
        elif job.link_planes:
            spacing = volume_segmentation.stack_spacing(target.image, target.stack_axis, target.plane.axes)
            pixels = self.window_picker.windowed(target.image, target.pixels())
            args = (volume_segmentation.volume_job, pixels, loaded, job.tile_shape, job.halo, job.params, spacing)
        else:
            pixels = self.window_picker.windowed(target.image, target.pixels())
            args = (segment_job, pixels, loaded, job.tile_shape, job.halo, job.params, report, method,
                    job.instance_params)
        worker = create_worker(
            guarded(args[0]),  # any error, RuntimeErrors included, reaches errored (and finished follows)
            *args[1:],
            _start_thread=False,
            _connect={"errored": self._on_error},
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_result(result, job, report))
        worker.finished.connect(self._on_finished)
        self._worker, self._step, self._started = worker, (0, 0), time.perf_counter()
        self._unit = "slice" if job.link_planes else "tile"
        self._progress = progress(total=0, desc="Segment everything" + (" (preview)" if job.preview else ""))
        where = "all planes" if target.stack_axis is not None else plane_ops.describe_plane(
            self.viewer, target.image, target.plane
        )
        verb = "Previewing" if job.preview else "Running"
        self.status.value = f"{verb}..." if where == "2D" else f"{verb} on {where}..."
        self._update_buttons()
        worker.start()

    def _update_buttons(self, _busy: bool | None = None) -> None:
        busy = self.is_busy()
        self.run_button.enabled = self.preview_button.enabled = not busy
        self.cancel_button.enabled = busy

    def _on_progress(self, step: tuple[int, int]) -> None:
        if self._worker is None or self._worker.abort_requested:
            return  # a tile that was queued before Cancel
        self._step = done, total = step
        if self._progress is not None:
            self._progress.total = total
            self._progress.n = done
            self._progress.refresh()
        self.status.value = f"{self._unit} {done} / {total}"

    def _on_error(self, err: Exception) -> None:
        err = original_error(err)
        if not isinstance(err, RUN_ERRORS):
            raise err  # a bug: napari shows the traceback (and a test fails); finished still frees the widget
        message = str(err) if isinstance(err, USER_ERRORS) else f"{type(err).__name__}: {err}"
        self._report(f"Segment everything failed: {message}")

    def _report(self, text: str) -> None:
        self.status.value = text
        show_error(text)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        self._update_buttons()

    def _on_result(self, result, job: Job, report: FilterReport) -> None:
        seconds = time.perf_counter() - self._started
        if job.preview:
            region, labels = result
            target = Target(job.target.image, job.target.plane, region)
            self._show_labels(labels, target, f"{target.image.name} preview", replace=True)
            what = f"Preview: {int(labels.max())} objects in {region[1] - region[0]} x {region[3] - region[2]} pixels"
        elif job.link_planes:
            labels = np.asarray(result)
            self._show_labels(labels, job.target, f"{job.target.image.name} {volume_segmentation.LAYER_SUFFIX}")
            what = volume_segmentation.describe_volume(labels)
        else:
            labels = np.asarray(result)
            self._show_labels(labels, job.target, f"{job.target.image.name} everything")
            what = f"{int(labels.max()) if labels.size else 0} objects"
        self.status.value = f"{what} ({seconds:.1f} s)."
        if job.link_planes or job.method == "instance":  # no filter rejections counted: no report to show
            self.report.setText("")
            self.apply_button.visible = False
        else:
            self.show_report(report)
        show_info(f"Segment everything: {what}.")

    def show_report(self, report: FilterReport) -> None:
        """Show what each filter rejected, and offer the suggested thresholds."""
        self.report.setText(report.describe())
        self._suggestion = report.suggest()
        self.apply_button.visible = bool(self._suggestion)

    def apply_suggestion(self) -> None:
        """Set the thresholds the last report suggested."""
        if "pred_iou_thresh" in self._suggestion:
            self.pred_iou_thresh.value = round(self._suggestion["pred_iou_thresh"], 2)
        if "stability_thresh" in self._suggestion:
            self.stability_thresh.value = round(self._suggestion["stability_thresh"], 2)
        self.apply_button.visible = False

    def _show_labels(self, labels: np.ndarray, target: Target, name: str, replace: bool = False):
        """Add ``labels`` as a Labels layer over the target, aligned with the image (``replace``: the same layer)."""
        data = target.layer_data(labels)
        transform = target.transform()
        if replace and name in self.viewer.layers:
            self.viewer.layers.remove(name)  # a preview replaces the last one, wherever it lay
        return self.viewer.add_labels(data, name=name, **transform)


def wrapping_label(text: str) -> QLabel:
    """A QLabel that wraps long text instead of widening the dock."""
    return make_wrapping(QLabel(text))


def make_wrapping(label: QLabel) -> QLabel:
    """Let ``label`` wrap its text at the dock's width: Qt would otherwise size a long text's
    label (and the dock) to a line of it. Its height follows the wrapped text."""
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # errors can be copied
    policy = label.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    label.setSizePolicy(policy)
    return label
