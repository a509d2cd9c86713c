"""The annotator's class picker: the class that committed objects get, fixing one object's class,
and segmenting every rectangle of a Shapes layer (boxes from elsewhere) with its class.

The class is kept per object in the annotator's object records (``labels.metadata``) and
in the labels' ``features`` (column ``class``), which the object list shows and the dataset
writers (File > Save Layers as ``.json`` COCO or ``.txt`` YOLO-seg) export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Shapes
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.controller import ROLE
from napari_sam._napari.dataset_io import IMAGE_FILE_METADATA
from napari_sam._napari.wrapping import WrappingLabel

if TYPE_CHECKING:
    from napari_sam._napari.controller import AnnotatorController

NO_CLASS = "(no class)"
CLASS_FEATURE = "class"  # a Shapes layer's feature column naming each box's class
HINT = (
    "Each commit gets this class (type a name to add one). Export: File > Save Selected Layers "
    "as .json (COCO) or .txt (YOLO-seg)."
)


class ClassPicker(QWidget):
    """Class of the next commits (an editable list) and a Set button to change one object's class.

    Parameters
    ----------
    controller
        The annotator's controller: its ``object_class`` is what commits give, its
        labels layer's records and features hold each object's class.
    """

    def __init__(self, controller: AnnotatorController):
        super().__init__()
        self.controller = controller
        self.class_box = QComboBox()
        self.class_box.setEditable(True)
        self.class_box.addItem(NO_CLASS)
        self.class_box.setInsertPolicy(QComboBox.InsertPolicy.InsertAtBottom)
        self.class_box.lineEdit().setPlaceholderText("type a class, e.g. nucleus")
        self.class_box.setToolTip("The class each committed object gets (type a new name and press Enter to add it)")
        self.object_id = QSpinBox()
        self.object_id.setRange(1, 2**31 - 1)
        self.object_id.setToolTip("The id of an object already committed (see the Objects list)")
        self.set_button = QPushButton("Set class")
        self.set_button.setToolTip("Give the object with this id the class chosen above")
        self.shapes_choice = _RefreshingComboBox(self._shapes_layers)
        self.shapes_choice.setToolTip(
            "A Shapes layer whose rectangles are boxes to segment (its 'class' feature, if any, names each box's class)"
        )
        self.segment_button = QPushButton("Segment boxes")
        self.segment_button.setToolTip(
            "Segment every rectangle of that layer on this slice, each an object of its class (one undo step per class)"
        )
        self.status = WrappingLabel(HINT)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("New objects:"), 0, 0)
        layout.addWidget(self.class_box, 0, 1, 1, 2)
        layout.addWidget(QLabel("Object id:"), 1, 0)
        layout.addWidget(self.object_id, 1, 1)
        layout.addWidget(self.set_button, 1, 2)
        layout.addWidget(QLabel("Boxes from:"), 2, 0)
        layout.addWidget(self.shapes_choice, 2, 1)
        layout.addWidget(self.segment_button, 2, 2)
        layout.addWidget(self.status, 3, 0, 1, 3)
        layout.setColumnStretch(1, 1)
        self.class_box.currentTextChanged.connect(self._on_class_changed)
        self.set_button.clicked.connect(self.set_object_class)
        self.segment_button.clicked.connect(lambda: self.segment_shapes())  # not clicked(checked) as the layer
        controller.objects_changed.connect(self._on_objects)

    @property
    def current_class(self) -> str:
        """The class new objects get ('' for none)."""
        text = self.class_box.currentText().strip()
        return "" if text == NO_CLASS else text

    def choose_class(self, name: str) -> None:
        """Make ``name`` the class of new objects (added to the list when new; '' for none).

        Parameters
        ----------
        name
            A class name.
        """
        name = name.strip() or NO_CLASS
        if self.class_box.findText(name) < 0:
            self.class_box.addItem(name)
        self.class_box.setCurrentIndex(self.class_box.findText(name))
        self._on_class_changed(name)

    def _on_class_changed(self, text: str) -> None:
        self.controller.object_class = self.current_class

    def _on_objects(self, table) -> None:
        """Offer every class the labels already use, and remember the image file for export."""
        if table is None:
            return
        for name in dict.fromkeys(str(c) for c in table["class"] if isinstance(c, str) and c):
            if self.class_box.findText(name) < 0:
                self.class_box.addItem(name)
        labels, image = self.controller.labels_layer, self.controller.image_layer
        source = getattr(getattr(image, "source", None), "path", None)
        if labels is not None and source:
            labels.metadata.setdefault(IMAGE_FILE_METADATA, str(source))

    def set_object_class(self) -> None:
        """Give the object whose id is in the id box the chosen class (the object list shows it)."""
        labels = self.controller.labels_layer
        label_id = int(self.object_id.value())
        if labels is None or labels not in self.controller.viewer.layers or not (labels.data == label_id).any():
            self.status.setText(f"There is no object {label_id} in the labels layer: see the Objects list for ids.")
            return
        records = labels.metadata.setdefault(self.controller.OBJECTS_METADATA, {})
        record = records.setdefault(label_id, {"score": float("nan"), "class": "", "plane": ""})
        record["class"] = self.current_class
        self.controller.refresh_objects()
        self.status.setText(f"Object {label_id} is now of class '{self.current_class or NO_CLASS}'.")

    def _shapes_layers(self) -> list[tuple[str, Shapes]]:
        """The viewer's Shapes layers, except the annotator's own prompt boxes."""
        return [(layer.name, layer) for layer in self.controller.viewer.layers
                if isinstance(layer, Shapes) and ROLE not in layer.metadata]

    def segment_shapes(self, layer: Shapes | None = None) -> list[int]:
        """Segment every rectangle of ``layer`` on the current slice, each an object of its class.

        A box's class is the layer's ``class`` feature when it has one (else the class picked
        above). Boxes go through the annotator's prompt boxes and are committed class by class,
        so each class is one undo step. 2D images only.

        Parameters
        ----------
        layer
            A Shapes layer; None: the one chosen in the list.

        Returns
        -------
        list of int
            The ids committed.
        """
        controller = self.controller
        if layer is None and self.shapes_choice.count() == 0:
            self.shapes_choice.refresh()
        layer = layer if layer is not None else self.shapes_choice.currentData()
        if layer is None or layer not in controller.viewer.layers:
            self.status.setText("Choose a Shapes layer with rectangles (boxes) first.")
            return []
        if controller.image_layer is None or controller.predictor is None:
            self.status.setText("Choose an image and load a model first.")
            return []
        if len(plane_ops.spatial_shape(controller.image_layer)) != 2:
            self.status.setText("Segment boxes works on 2D images; on a stack, draw boxes in the annotator slice by slice.")
            return []
        if not controller.has_embedding():
            self.status.setText("This slice has no embedding yet: wait for it (or Embed slice), then try again.")
            return []
        _, point_labels, boxes = controller.prompts_on_plane(controller.current_plane())
        if len(point_labels) or len(boxes):
            self.status.setText("Commit or clear the prompts on this slice first (they would mix with the boxes).")
            return []
        groups = self._boxes_by_class(layer)
        if not groups:
            self.status.setText(f"'{layer.name}' has no rectangles.")
            return []
        written, previous = [], controller.object_class
        try:
            for name, corners in groups.items():
                controller.object_class = name
                controller.boxes_layer.add_rectangles(corners)
                written += controller.commit()
                controller.clear_prompts()  # boxes off this slice (nothing committed) go too
        finally:
            controller.object_class = previous
        self.status.setText(f"Segmented {len(written)} of {sum(len(c) for c in groups.values())} box(es) of "
                            f"'{layer.name}' into '{controller.labels_layer.name if written else '-'}'.")
        return written

    def _boxes_by_class(self, layer: Shapes) -> dict[str, list[np.ndarray]]:
        """The layer's rectangles as corner pairs in the prompt boxes' data frame, grouped by class."""
        boxes_layer = self.controller.boxes_layer
        features = layer.features
        names = list(features[CLASS_FEATURE]) if CLASS_FEATURE in features else [None] * len(layer.data)
        groups: dict[str, list[np.ndarray]] = {}
        for vertices, shape_type, name in zip(layer.data, layer.shape_type, names, strict=True):
            if shape_type != "rectangle":
                continue
            # through world coordinates: the two layers may have different transforms
            corners = np.array([boxes_layer.world_to_data(layer.data_to_world(v)) for v in vertices])
            label = str(name) if isinstance(name, str) and name else self.current_class
            groups.setdefault(label, []).append(np.array([corners.min(axis=0), corners.max(axis=0)]))
        return groups


class _RefreshingComboBox(QComboBox):
    """A list of layers filled each time it opens (so it needs no connection to the viewer's events)."""

    def __init__(self, choices):
        super().__init__()
        self._choices = choices

    def refresh(self) -> None:
        current = self.currentData()
        self.clear()
        for name, layer in self._choices():
            self.addItem(name, layer)
        index = self.findData(current) if current is not None else -1
        self.setCurrentIndex(max(index, 0) if self.count() else -1)

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        self.refresh()
        super().showPopup()
