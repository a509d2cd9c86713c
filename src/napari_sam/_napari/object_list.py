"""The committed objects of the annotator as a table: show, delete, re-segment, save.

:class:`ObjectListWidget` is a thin Qt view of :class:`~.controller.AnnotatorController`:
the rows come from ``controller.refresh_objects()`` (the labels layer's ``features``,
recounted from its pixels, so undo and hand painting are followed) and every action is a
controller method; the widget only adds the file dialogs.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_sam.engine.errors import InputError
from napari_sam.engine.io import label_files

COLUMNS = ("Id", "Area (px)", "Class", "Score")
COLUMN_TIPS = (
    "The object's label id in the labels layer",
    "Pixels of the object, over all planes",
    "The object's class (empty until classes are assigned)",
    "SAM's predicted quality of the committed mask (empty for objects painted by hand)",
)
REFRESH_DELAY_MS = 150  # edits come in bursts (a brush stroke, slider moves): recount once they settle


class _NumberItem(QTableWidgetItem):
    """A read-only cell showing ``text`` that sorts by ``value`` (NaN first)."""

    def __init__(self, value: float, text: str):
        super().__init__(text)
        self.value = -math.inf if value != value else float(value)  # NaN != NaN
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other) -> bool:
        return self.value < getattr(other, "value", -math.inf)


class ObjectListWidget(QWidget):
    """Table of the committed objects (id, area, class, score) with Show all, Delete, Re-segment, Save.

    Selecting a row shows that object alone and moves the sliders to it. Embed it in a
    dock next to the annotator: ``ObjectListWidget(controller)``.
    """

    def __init__(self, controller, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        self._stale = True
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.table = self._make_table()
        self.show_all_button = self._button("Show all", "Show every object again (after selecting one)", self._show_all)
        self.delete_button = self._button("Delete", "Erase the selected object from every plane (Ctrl+Z undoes)",
                                          self._delete)
        self.resegment_button = self._button(
            "Re-segment",
            "Redo the selected object: the next commit replaces its pixels on the slice you annotate, keeping its id",
            self._toggle_resegment,
        )
        self.resegment_button.setCheckable(True)
        self.save_button = self._button("Save labels...", "Write the labels as TIFF, with the object table as CSV "
                                        "beside it", self.save_labels)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_DELAY_MS)
        self._timer.timeout.connect(self.refresh)
        self._layout()
        controller.objects_changed.connect(self._on_objects_changed)
        controller.viewer.layers.events.inserted.connect(self._schedule_refresh)
        controller.viewer.layers.events.removed.connect(self._schedule_refresh)
        self.refresh()

    # ------------------------------------------------------------------ layout
    def _make_table(self) -> QTableWidget:
        table = QTableWidget(0, len(COLUMNS))
        table.setHorizontalHeaderLabels(COLUMNS)
        for column, tip in enumerate(COLUMN_TIPS):
            table.horizontalHeaderItem(column).setToolTip(tip)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        table.setSortingEnabled(True)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # Qt's default indicator is descending
        table.setMinimumHeight(120)
        table.setToolTip("Click a row to show that object alone; click a header to sort")
        table.itemSelectionChanged.connect(self._on_selection_changed)
        return table

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        return button

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        for button in (self.show_all_button, self.delete_button, self.resegment_button):
            row.addWidget(button)
        layout.addLayout(row)
        layout.addWidget(self.save_button)

    # ----------------------------------------------------------------- refresh
    def _on_objects_changed(self, table=None) -> None:
        if table is None:  # pixels changed (painting, undo): recount once the burst settles
            self._schedule_refresh()
        else:
            self._fill(table)

    def _schedule_refresh(self, event=None) -> None:
        if self.isVisible():
            self._timer.start()
        else:
            self._stale = True  # recounted when shown

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.disconnect_viewer()
        super().closeEvent(event)

    def disconnect_viewer(self) -> None:
        """Stop following the controller and the viewer's layers (before the widget goes away)."""
        self._timer.stop()
        for signal, slot in (
            (self.controller.objects_changed, self._on_objects_changed),
            (self.controller.viewer.layers.events.inserted, self._schedule_refresh),
            (self.controller.viewer.layers.events.removed, self._schedule_refresh),
        ):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                signal.disconnect(slot)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._stale:
            self.refresh()

    def refresh(self) -> None:
        """Recount the objects from the labels layer and show them."""
        self._stale = False
        self.controller.refresh_objects()  # emits objects_changed(table) -> _fill

    def _fill(self, table) -> None:
        selected = self.selected_id()
        table_widget = self.table
        table_widget.blockSignals(True)
        table_widget.setSortingEnabled(False)  # rows would move while being filled
        table_widget.setRowCount(len(table))
        for row, (label_id, area, label_class, score) in enumerate(
            zip(table["index"], table["area"], table["class"], table["score"], strict=True)
        ):
            score = float(score)
            table_widget.setItem(row, 0, _NumberItem(int(label_id), str(int(label_id))))
            table_widget.setItem(row, 1, _NumberItem(int(area), str(int(area))))
            class_item = QTableWidgetItem(str(label_class))
            class_item.setFlags(class_item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            table_widget.setItem(row, 2, class_item)
            score_item = _NumberItem(score, "" if math.isnan(score) else f"{score:.3f}")
            if math.isnan(score):
                score_item.setToolTip("No score: painted by hand, not committed from SAM")
            table_widget.setItem(row, 3, score_item)
        table_widget.setSortingEnabled(True)
        self._select_row_of(selected)
        table_widget.blockSignals(False)
        self._update_title(len(table))
        self._update_buttons()

    def _update_title(self, count: int) -> None:
        labels = self.controller.labels_layer
        if labels is None:
            self.title.setText("No objects yet: commit a mask to start the list.")
        else:
            self.title.setText(f"{count} object{'s' * (count != 1)} in '{labels.name}'")

    def _update_buttons(self) -> None:
        has_selection = self.selected_id() is not None
        resegmenting = self.controller.resegment_id is not None
        self.delete_button.setEnabled(has_selection)
        self.resegment_button.setEnabled(has_selection or resegmenting)
        self.resegment_button.blockSignals(True)
        self.resegment_button.setChecked(resegmenting)
        self.resegment_button.blockSignals(False)
        self.resegment_button.setText(
            f"Re-segmenting {self.controller.resegment_id}..." if resegmenting else "Re-segment"
        )
        self.save_button.setEnabled(self.controller.labels_layer is not None)

    # --------------------------------------------------------------- selection
    def selected_id(self) -> int | None:
        """The id of the selected row, or None."""
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return int(self.table.item(rows[0].row(), 0).text())

    def select_id(self, label_id: int) -> None:
        """Select the row of ``label_id`` (as a click would: the object is shown)."""
        for row in range(self.table.rowCount()):
            if int(self.table.item(row, 0).text()) == label_id:
                self.table.selectRow(row)
                return
        raise InputError(f"Object {label_id} is not in the list.")

    def _select_row_of(self, label_id: int | None) -> None:
        """Select ``label_id``'s row again after a refill; if it is gone, show every object."""
        self.table.clearSelection()
        for row in range(self.table.rowCount()):
            if label_id is not None and int(self.table.item(row, 0).text()) == label_id:
                self.table.selectRow(row)
                return
        if label_id is not None:  # deleted or undone: showing it alone would show nothing
            self.controller.show_all_objects()

    def _on_selection_changed(self) -> None:
        label_id = self.selected_id()
        self._update_buttons()
        if label_id is None:
            self._run(self.controller.show_all_objects)
        else:
            self._run(self.controller.show_object, label_id)

    # ----------------------------------------------------------------- actions
    def _run(self, action, *args) -> bool:
        """Run a controller action; a user error becomes a warning, not a traceback."""
        try:
            action(*args)
        except InputError as err:
            show_warning(str(err))
            return False
        return True

    def _show_all(self) -> None:
        self.table.clearSelection()
        self.controller.show_all_objects()

    def _delete(self) -> None:
        label_id = self.selected_id()
        if label_id is not None:
            self._run(self.controller.delete_object, label_id)

    def _toggle_resegment(self, checked: bool) -> None:
        label_id = self.selected_id()
        if checked and label_id is not None:
            self._run(self.controller.start_resegment, label_id)
        else:
            self.controller.cancel_resegment()
        self._update_buttons()

    def save_labels(self) -> list[Path]:
        """Ask for a TIFF path and write the labels (and the object table as CSV beside it)."""
        labels = self.controller.labels_layer
        if labels is None:
            show_warning("No labels to save yet: commit an object first.")
            return []
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save labels",
            str(self._default_path(labels)),
            "TIFF (*.tif *.tiff)",
            options=QFileDialog.Option.DontConfirmOverwrite,  # asked below, naming the CSV too
        )
        if not path:
            return []
        path = Path(path) if Path(path).suffix else Path(path).with_suffix(".tif")
        existing = label_files.existing_outputs(path)
        if existing and not self._confirm_replace(existing):
            return []
        table = self.controller.refresh_objects()
        columns = {column: table[column].tolist() for column in table.columns}
        try:
            written = label_files.save_labels(path, labels.data, columns, overwrite=bool(existing))
        except InputError as err:
            show_warning(str(err))
            return []
        show_info(f"Saved {len(table)} objects to {written[0].name} (table: {written[1].name}).")
        return written

    def _confirm_replace(self, existing: list[Path]) -> bool:
        names = " and ".join(p.name for p in existing)
        answer = QMessageBox.question(
            self,
            "Replace files?",
            f"{names} already exist{'s' * (len(existing) == 1)} in {existing[0].parent}. Replace?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _default_path(self, labels) -> Path:
        """Beside the annotated image's file when napari knows it, else in the working folder."""
        image = self.controller.image_layer
        source = getattr(getattr(image, "source", None), "path", None)
        folder = Path(source).parent if source else Path.cwd()
        return folder / f"{labels.name}.tif"
