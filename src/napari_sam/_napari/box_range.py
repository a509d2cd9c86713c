"""MedSAM's 3D box in the annotator: a box on one slice plus a range of slices (or boxes on two slices).

The object boxed on the slice shown is carried through the range by the volume propagation
engine (``z_range``: it never leaves the range) with the annotator's intensity window and the
scan's voxel spacing, shown as the propagation preview, and committed as one object in one undo
step with the commit key, like any propagation (:mod:`.propagation`).
"""

from __future__ import annotations

import numpy as np
from magicgui import widgets
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.controller import AnnotatorController
from napari_sam._napari.propagation import propagation_axis, propagation_of
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


def start_box_range(annotator: AnnotatorController, first: int | None = None, last: int | None = None) -> tuple[int, int]:
    """Propagate the object boxed on the slice shown through slices ``first`` to ``last`` (inclusive).

    With boxes on exactly two slices and no range given, the range is the slices between them.
    Runs in the background when the propagation dock set ``run_in_background``, else here.

    Parameters
    ----------
    annotator
        The annotator of the viewer; its slice shown holds one box.
    first, last
        Slice indices along the propagation axis (the slider the arrow keys move).

    Returns
    -------
    first, last : int
        The range used.

    Raises
    ------
    InputError
        No image or model, no box on the slice shown, a range that does not contain it.
    """
    propagation = propagation_of(annotator)
    request = propagation.make_request("both")
    if request.box is None:
        raise InputError("A 3D box starts from a box: draw one around the object on a slice of the range (R, drag).")
    if first is None or last is None:
        slices = box_slices(annotator, request.axis)
        if len(slices) != 2:
            raise InputError(
                f"Give the range of slices, or draw boxes on two slices (the range between them); found boxes on "
                f"{len(slices)} slice(s)."
            )
        first, last = slices
    first, last = sorted((int(first), int(last)))
    if not first <= request.seed <= last:
        raise InputError(f"The box is on slice {request.seed}, outside the range {first} to {last}: go to a slice "
                         "inside it, or change the range.")
    request.options["z_range"] = (first, last)
    propagation.begin(request)
    if propagation.run_in_background is not None:
        propagation.run_in_background(request)
        return first, last
    planes = propagation.job(request)()
    try:
        while True:
            try:
                propagation.show_plane(next(planes))
            except StopIteration as stop:  # the generator's return value is the engine's result
                propagation.finish(stop.value)
                break
    except BaseException:
        propagation.stopped()
        raise
    return first, last


class BoxRangeSection(QWidget):
    """'3D box' row of the annotator: slice range and a button; for MedSAM-style box-first work."""

    def __init__(self, annotator: AnnotatorController):
        super().__init__()
        self.annotator = annotator
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
            first, last = start_box_range(annotator, self.first.value, self.last.value)
        except InputError as err:
            self.status.setText(str(err))
            show_error(str(err))
            return
        self.status.setText(f"Slices {first} to {last}: the object is shown in yellow as it is found; commit it with "
                            "the commit key.")
