"""The annotator's class picker: the class that committed objects get, and fixing one object's class.

The class is kept per object in the annotator's object records (``labels.metadata``) and
in the labels' ``features`` (column ``class``), which the object list shows and the dataset
writers (File > Save Layers as ``.json`` COCO or ``.txt`` YOLO-seg) export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_sam._napari.dataset_io import IMAGE_FILE_METADATA
from napari_sam._napari.wrapping import WrappingLabel

if TYPE_CHECKING:
    from napari_sam._napari.controller import AnnotatorController

NO_CLASS = "(no class)"
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
        self.status = WrappingLabel(HINT)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("New objects:"), 0, 0)
        layout.addWidget(self.class_box, 0, 1, 1, 2)
        layout.addWidget(QLabel("Object id:"), 1, 0)
        layout.addWidget(self.object_id, 1, 1)
        layout.addWidget(self.set_button, 1, 2)
        layout.addWidget(self.status, 2, 0, 1, 3)
        layout.setColumnStretch(1, 1)
        self.class_box.currentTextChanged.connect(self._on_class_changed)
        self.set_button.clicked.connect(self.set_object_class)
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
