"""MedSAM's 3D box in the annotator: a box on one slice plus a range of slices (or boxes on two slices).

Every slice of the range is segmented with the box (between two boxed slices, the box
interpolated), as MedSAM was trained, with the annotator's intensity window and the scan's voxel
spacing (:mod:`napari_sam.engine.predict.box_range`); the result is shown as the propagation
preview and committed as one object in one undo step with the commit key, like any propagation
(:mod:`.propagation`).
"""

from __future__ import annotations

import numpy as np
from magicgui import widgets
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.controller import AnnotatorController
from napari_sam._napari.propagation import plane_at, propagation_axis, propagation_of
from napari_sam._napari.wrapping import WrappingLabel
from napari_sam.engine.errors import InputError


def prompt_mode(model_id: str | None) -> str:
    """"box" when ``model_id`` names a box-first zoo model (MedSAM), else "points".

    Parameters
    ----------
    model_id
        A zoo name or a checkpoint path (a file says nothing: "points").

    Returns
    -------
    str
        The zoo entry's ``prompt_mode``.
    """
    from napari_sam.model.zoo import REGISTRY

    entry = REGISTRY.get(str(model_id)) if model_id is not None else None
    return entry.prompt_mode if entry is not None else "points"


def box_slices(annotator: AnnotatorController, axis: int) -> list[int]:
    """The slice indices along ``axis`` that hold a box (sorted, distinct).

    Parameters
    ----------
    annotator
        The annotator (its boxes layer, in the image's data frame).
    axis
        The image's data axis across the slices.
    """
    layer = annotator.boxes_layer
    if layer is None:
        return []
    return sorted({int(round(float(np.mean(np.asarray(box)[:, axis])))) for box in layer.data})


def start_box_range(annotator: AnnotatorController, first: int | None = None, last: int | None = None):
    """Segment the object boxed on the slice shown on every slice from ``first`` to ``last`` (inclusive).

    Each slice gets the box (with boxes on two slices, the box interpolated between them) as
    MedSAM expects (:func:`~napari_sam.engine.predict.box_range.iter_box_range`); the slices are
    shown as a propagation preview and committed with the commit key. With boxes on exactly two
    slices and no range given, the range is the slices between them. Runs in a worker when the
    annotator's dock is there (its propagation has ``run_in_background``), else here.

    Parameters
    ----------
    annotator
        The annotator of the viewer; its slice shown holds one box.
    first, last
        Slice indices along the propagation axis (the slider the arrow keys move).

    Returns
    -------
    tuple
        ``(first, last, worker)``: the range used and the started worker (None when run here).

    Raises
    ------
    InputError
        No image or model, no box on the slice shown, a range that does not contain the boxes.
    """
    propagation = propagation_of(annotator)
    request = propagation.make_request("both")
    if request.box is None:
        raise InputError("A 3D box starts from a box: draw one around the object on a slice of the range (R, drag).")
    boxes = {request.seed: request.box}
    for z in box_slices(annotator, request.axis):
        if z != request.seed:
            _, _, other = annotator.prompts_on_plane(plane_at(request.plane, request.axis, z))
            if len(other) == 1:
                boxes[z] = other[0]
    if first is None or last is None:
        if len(boxes) != 2:
            raise InputError(
                f"Give the range of slices, or draw boxes on two slices (the range between them); found boxes on "
                f"{len(boxes)} slice(s)."
            )
        first, last = min(boxes), max(boxes)
    first, last = sorted((int(first), int(last)))
    if not first <= request.seed <= last:
        raise InputError(f"The box is on slice {request.seed}, outside the range {first} to {last}: go to a slice "
                         "inside it, or change the range.")
    request.boxes = {z: box for z, box in boxes.items() if first <= z <= last}
    request.options["z_range"] = (first, last)
    if propagation.run_in_background is None:
        propagation.run(request)
        return first, last, None
    propagation.begin(request)
    return first, last, _start_worker(propagation, propagation.job(request))


def _start_worker(propagation, job):
    """Run ``job`` in a napari worker: each slice to the preview, the result to it at the end."""
    from napari.qt.threading import create_worker

    from napari_sam._napari.workers import guarded, original_error

    def on_error(error: BaseException) -> None:
        propagation.stopped()
        show_error(f"3D box failed: {original_error(error)}")

    worker = create_worker(guarded(job), _start_thread=False, _connect={"errored": on_error})
    worker.yielded.connect(propagation.show_plane)
    worker.returned.connect(propagation.finish)
    worker.start()
    return worker


class BoxRangeSection(QWidget):
    """'3D box' row of the annotator: slice range and a button; for MedSAM-style box-first work."""

    def __init__(self, annotator: AnnotatorController):
        super().__init__()
        self.annotator = annotator
        self._worker = None  # the running 3D box, kept while it runs
        self.first = widgets.SpinBox(label="From slice", min=0, max=100000,
                                     tooltip="First slice of the 3D box (the slider's index)")
        self.last = widgets.SpinBox(label="to slice", min=0, max=100000,
                                    tooltip="Last slice of the 3D box (inclusive)")
        self.button = widgets.PushButton(
            text="Segment 3D box",
            tooltip="Carry the object boxed on this slice through the slices of the range (boxes on two slices: "
                    "between them); commit it as one object with the commit key",
        )
        self.status = WrappingLabel("Draw a box on one slice, set the slices it spans, then Segment 3D box.")
        form = widgets.Container(widgets=[self.first, self.last, self.button], layout="vertical")
        form.margins = (0, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(form.native)
        layout.addWidget(self.status)
        self.button.clicked.connect(self.run)
        annotator.image_changed.connect(self._on_image)
        self._on_image(annotator.image_layer)

    def _on_image(self, layer) -> None:
        stack = layer is not None and len(plane_ops.spatial_shape(layer)) >= 3
        self.setEnabled(stack)
        if stack:
            n = plane_ops.spatial_shape(layer)[0]
            self.first.max = self.last.max = n - 1
            self.first.value, self.last.value = 0, n - 1

    def run(self) -> None:
        """Segment the 3D box; boxes on two slices set the range fields first."""
        annotator = self.annotator
        try:
            plane = annotator.current_plane()
            axis = propagation_axis(annotator.viewer, annotator.image_layer, plane)
            slices = box_slices(annotator, axis)
            if len(slices) == 2:
                self.first.value, self.last.value = slices
            first, last, self._worker = start_box_range(annotator, self.first.value, self.last.value)
        except InputError as err:
            self.status.setText(str(err))
            show_error(str(err))
            return
        self.status.setText(f"Slices {first} to {last}: the object is shown in yellow as it is found; commit it with "
                            "the commit key.")
