"""The intensity-window picker both docks use: CT presets, percentiles, custom width/level.

A window decides which values SAM sees as black and white, the same for every plane of the image
(:mod:`napari_sam.engine.predict.windows`). Choosing one also sets the image layer's contrast
limits to it, so the screen shows what SAM sees, and records it in ``layer.metadata`` so the other
dock and a later session find it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui import widgets
from napari.utils.notifications import show_error
from psygnal import Signal
from qtpy.QtWidgets import QComboBox

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.medical_io import WINDOW_KEY, WINDOW_RANGE_KEY
from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.windows import (
    AUTO,
    CT_PRESETS,
    MR_PERCENTILES,
    PRESET_TITLES,
    Window,
    WindowedVolume,
    ct_window,
    parse_window,
    percentile_window,
    window_range,
)

PERCENTILES, CUSTOM = "percentiles", "custom"


def _choices() -> list[tuple[str, str]]:
    presets = [(f"CT {PRESET_TITLES[name]}: W {w:g} / L {lvl:g}", name) for name, (w, lvl) in CT_PRESETS.items()]
    return [
        ("Automatic (percentiles 0.5-99.5)", AUTO),
        *presets,
        ("MR / other: percentiles...", PERCENTILES),
        ("Custom width / level (HU)...", CUSTOM),
    ]


def _windowable(layer) -> bool:
    """Single-channel images only: a window maps one value to grey; RGB is shown as it is."""
    return layer is not None and not getattr(layer, "rgb", False) and np.dtype(layer.dtype).kind in "biuf"


class WindowPicker:
    """Window choice, the fields of the chosen kind, and one line saying what black and white are.

    ``fields`` (magicgui widgets) go into the dock's form, so they align with its other fields;
    ``summary`` (a label) goes under it. ``window_changed`` is emitted with the :class:`Window`
    when the user changes it.
    """

    window_changed = Signal(object)

    def __init__(self):
        self.choice = widgets.ComboBox(
            label="Window", choices=_choices(), value=AUTO,
            tooltip="Which intensities SAM sees as black and white, the same on every slice (and on screen)",
        )
        # long preset names must not widen the dock: the list opens wide enough, the box stays narrow
        self.choice.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.choice.native.setMinimumContentsLength(12)
        self.width = widgets.FloatSpinBox(label="Width (HU)", value=400.0, min=1.0, max=10000.0, step=10.0,
                                          tooltip="Window width W: the span shown from black to white")
        self.level = widgets.FloatSpinBox(label="Level (HU)", value=40.0, min=-3000.0, max=5000.0, step=10.0,
                                          tooltip="Window level L: the value shown mid-grey")
        self.low = widgets.FloatSpinBox(label="Low percentile", value=MR_PERCENTILES[0], min=0.0, max=100.0, step=0.5,
                                        tooltip="Values below this percentile of the whole volume are black")
        self.high = widgets.FloatSpinBox(label="High percentile", value=MR_PERCENTILES[1], min=0.0, max=100.0,
                                         step=0.5, tooltip="Values above this percentile of the whole volume are white")
        self.fields = [self.choice, self.width, self.level, self.low, self.high]
        self.summary = widgets.Label(value="", label="")  # under the choice, in the form's value column
        self.summary.native.setWordWrap(True)
        self.widgets = [*self.fields, self.summary]  # what a dock puts in its form
        self._quiet = False
        self._show_fields()
        for field in self.fields:
            field.changed.connect(self._on_edit)

    def setEnabled(self, enabled: bool) -> None:  # noqa: N802 (as Qt names it)
        """Enable or disable every field (disabled for RGB images and without an image)."""
        for field in self.fields:
            field.enabled = enabled

    def _say(self, text: str) -> None:
        self.summary.value = text
        self.summary.visible = bool(text)

    # ------------------------------------------------------------ state
    def window(self) -> Window:
        """The window the fields describe (InputError for an impossible one)."""
        kind = self.choice.value
        if kind == CUSTOM:
            return ct_window(self.width.value, self.level.value)
        if kind == PERCENTILES:
            return percentile_window(self.low.value, self.high.value)
        return parse_window(kind)

    def set_window(self, window: Window | str, emit: bool = False) -> None:
        """Show ``window`` (a :class:`Window` or its text); ``emit``: as if the user chose it."""
        window = parse_window(window) if isinstance(window, str) else window
        self._quiet = not emit
        try:
            if window.name in CT_PRESETS or window.name == AUTO:
                self.choice.value = window.name
            elif window.kind == "percentile":
                self.low.value, self.high.value = window.percentiles
                self.choice.value = PERCENTILES
            else:
                self.width.value, self.level.value = window.width, window.level
                self.choice.value = CUSTOM
        finally:
            self._quiet = False
        self._show_fields()
        if emit:
            self._on_edit()

    def _show_fields(self) -> None:
        kind = self.choice.value
        self.width.visible = self.level.visible = kind == CUSTOM
        self.low.visible = self.high.visible = kind == PERCENTILES

    def _on_edit(self, _value=None) -> None:
        self._show_fields()
        if self._quiet:
            return
        try:
            window = self.window()
        except InputError as err:
            self._say(str(err))
            return
        self.window_changed.emit(window)

    # ------------------------------------------------------------ layers
    def show_layer(self, layer) -> None:
        """Show the window recorded for ``layer`` (Automatic if none); disabled for RGB or no image."""
        self.setEnabled(_windowable(layer))
        spec = layer.metadata.get(WINDOW_KEY, AUTO) if layer is not None else AUTO
        try:
            self.set_window(spec)
        except InputError:
            self.set_window(AUTO)
        self._say("" if layer is None else self._describe(layer))

    def apply_to(self, layer) -> tuple[float, float] | None:
        """Set ``layer``'s contrast limits to the chosen window and record it; returns its (low, high).

        Returns None for an RGB layer (nothing to window). Percentiles are measured on the whole
        layer (a few planes of it), once.
        """
        if not _windowable(layer):
            return None
        window = self.window()
        low, high = window_range(window, plane_ops.base_data(layer))
        layer.metadata = {**layer.metadata, WINDOW_KEY: window.spec(), WINDOW_RANGE_KEY: [low, high]}
        layer.contrast_limits_range = (min(low, layer.contrast_limits_range[0]), max(high, layer.contrast_limits_range[1]))
        layer.contrast_limits = (low, high)
        self._say(self._describe(layer))
        return low, high

    def windowed(self, layer, pixels: Any) -> Any:
        """``pixels`` of ``layer`` seen through its recorded window (lazy uint8); unchanged when Automatic.

        Parameters
        ----------
        layer
            The image layer the pixels come from.
        pixels
            Its region or planes (any array type).
        """
        recorded = layer.metadata.get(WINDOW_RANGE_KEY)
        if not _windowable(layer) or not recorded:
            return pixels  # never chosen: the engine's own percentile estimate
        return WindowedVolume(pixels, tuple(recorded))

    def _describe(self, layer) -> str:
        recorded = layer.metadata.get(WINDOW_RANGE_KEY)
        if not _windowable(layer):
            return "RGB image: shown and segmented as it is."
        if not recorded:
            return "SAM scales this image between its 0.5 and 99.5 percentiles."
        low, high = recorded
        spec = layer.metadata.get(WINDOW_KEY, AUTO)
        ct = spec in CT_PRESETS or "," in spec  # a width/level window is in HU
        unit = " HU" if ct else ""
        where = "" if ct else f" ({parse_window(spec).describe().removeprefix('Automatic: ')})"
        return f"Black at {low:.4g}{unit}, white at {high:.4g}{unit}{where}: every slice, on screen and for SAM."


def connect_annotator(picker: WindowPicker, annotator) -> None:
    """Make ``picker`` drive the annotator: its controller scales every plane with the window.

    Parameters
    ----------
    picker
        The annotator's picker.
    annotator
        The :class:`~napari_sam._napari.annotator_widget.AnnotatorWidget`.
    """
    controller = annotator.controller

    def on_window(_window: Window) -> None:
        layer = controller.image_layer
        if layer is None:
            return
        try:
            value = picker.apply_to(layer)
        except InputError as err:
            picker._say(str(err))
            show_error(str(err))
            return
        annotator.cancel_embeddings()
        controller.set_intensity_range(value)  # drops embeddings made with the old window
        if annotator.auto_embed.value:
            annotator.embed_current_plane(report=False)

    def on_image(layer) -> None:
        picker.show_layer(layer)
        recorded = layer.metadata.get(WINDOW_RANGE_KEY) if layer is not None else None
        if recorded and _windowable(layer):
            controller.set_intensity_range(tuple(recorded))  # a window chosen earlier (or in the other dock)

    picker.window_changed.connect(on_window)
    controller.image_changed.connect(on_image)
    on_image(controller.image_layer)


def connect_segment_everything(picker: WindowPicker, widget) -> None:
    """Make ``picker`` follow the Segment everything dock's image choice and window that image.

    Parameters
    ----------
    picker
        The dock's picker.
    widget
        The :class:`~napari_sam._napari.segment_everything_widget.SegmentEverythingWidget`.
    """

    def on_window(_window: Window) -> None:
        try:
            picker.apply_to(widget.image_choice.value)
        except InputError as err:
            picker._say(str(err))
            show_error(str(err))

    picker.window_changed.connect(on_window)
    widget.image_choice.changed.connect(picker.show_layer)
    picker.show_layer(widget.image_choice.value)

