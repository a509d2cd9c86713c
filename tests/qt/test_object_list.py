"""GUI tests of the object list: rows follow commits, undo and edits; select, delete, re-segment, save.

Run with a display, e.g.
    xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/qt/test_object_list.py
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_sam._napari.controller import AnnotatorController
from napari_sam._napari.object_list import ObjectListWidget
from napari_sam.engine import Predictor
from napari_sam.engine.datasets.synthetic import synthetic_image

pytestmark = pytest.mark.gui


def centroids(truth: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Centres of the ``count`` largest true objects (a pixel inside each)."""
    ids, areas = np.unique(truth[truth > 0], return_counts=True)
    centres = []
    for label_id in ids[np.argsort(areas)[::-1][:count]]:
        rows, cols = np.nonzero(truth == label_id)
        middle = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        centres.append((int(rows[middle]), int(cols[middle])))
    return centres


@pytest.fixture
def annotated(make_napari_viewer, qtbot, trained_model):
    """A viewer, controller and object list with two objects committed by the trained tiny model."""
    sample = synthetic_image((128, 128), seed=3, style="small_nuclei")
    viewer = make_napari_viewer(show=False)
    controller = AnnotatorController(viewer)
    controller.set_predictor(Predictor(trained_model, device="cpu", precision="fp32"), model_id="tiny")
    controller.set_image_layer(viewer.add_image(sample.image))
    widget = ObjectListWidget(controller)
    qtbot.addWidget(widget)
    widget.show()
    centres = centroids(sample.labels, 3)
    for centre in centres[:2]:
        controller.add_point(centre)
        controller.commit()
    return viewer, controller, widget, centres


def rows(widget) -> list[tuple[str, ...]]:
    table = widget.table
    return [tuple(table.item(r, c).text() for c in range(table.columnCount())) for r in range(table.rowCount())]


def click_row(qtbot, widget, label_id: int) -> None:
    table = widget.table
    row = next(r for r in range(table.rowCount()) if table.item(r, 0).text() == str(label_id))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(row, 1)).center())


def test_rows_list_the_committed_objects_and_follow_undo(qtbot, annotated):
    viewer, controller, widget, _ = annotated
    labels = controller.labels_layer
    ids, areas = np.unique(labels.data[labels.data > 0], return_counts=True)
    assert ids.tolist() == [1, 2]
    listed = rows(widget)
    assert [(r[0], r[1], r[2]) for r in listed] == [("1", str(areas[0]), ""), ("2", str(areas[1]), "")]
    scores = labels.features["score"].tolist()
    assert [r[3] for r in listed] == [f"{s:.3f}" for s in scores] and all(0 < s <= 1.5 for s in scores)
    assert widget.title.text() == "2 objects in 'SAM labels'"
    labels.undo()  # the second commit goes: its row too, once the edit settles
    qtbot.waitUntil(lambda: [r[0] for r in rows(widget)] == ["1"], timeout=3000)
    labels.redo()
    qtbot.waitUntil(lambda: [r[0] for r in rows(widget)] == ["1", "2"], timeout=3000)


def test_select_shows_the_object_and_delete_is_one_undo_step(qtbot, annotated):
    viewer, controller, widget, _ = annotated
    labels = controller.labels_layer
    before = labels.data.copy()
    click_row(qtbot, widget, 2)
    assert widget.selected_id() == 2
    assert labels.show_selected_label and labels.selected_label == 2
    assert widget.delete_button.isEnabled()
    qtbot.mouseClick(widget.delete_button, Qt.MouseButton.LeftButton)
    assert not (labels.data == 2).any() and [r[0] for r in rows(widget)] == ["1"]
    assert not labels.show_selected_label  # the shown object is gone: every object is shown again
    labels.undo()  # ONE undo restores the whole object
    np.testing.assert_array_equal(labels.data, before)
    qtbot.waitUntil(lambda: [r[0] for r in rows(widget)] == ["1", "2"], timeout=3000)
    qtbot.mouseClick(widget.show_all_button, Qt.MouseButton.LeftButton)
    assert not labels.show_selected_label and widget.selected_id() is None


def test_resegment_writes_the_same_id_in_one_undo_step(qtbot, annotated):
    viewer, controller, widget, centres = annotated
    labels = controller.labels_layer
    before = labels.data.copy()
    click_row(qtbot, widget, 1)
    qtbot.mouseClick(widget.resegment_button, Qt.MouseButton.LeftButton)
    assert widget.resegment_button.isChecked() and controller.resegment_id == 1
    controller.add_point(centres[2])  # the third object, not committed before
    assert controller.commit() == [1]
    assert labels.data[centres[2]] == 1 and not (labels.data[before == 1] == 1).all()  # moved
    np.testing.assert_array_equal(labels.data == 2, before == 2)
    assert [r[0] for r in rows(widget)] == ["1", "2"]
    assert not widget.resegment_button.isChecked() and controller.resegment_id is None  # normal commits again
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_save_labels_writes_tiff_and_csv_and_asks_before_replacing(qtbot, annotated, tmp_path, monkeypatch):
    viewer, controller, widget, _ = annotated
    labels = controller.labels_layer
    target = tmp_path / "cells"  # no suffix: .tif is added
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(target), "TIFF (*.tif *.tiff)"))
    qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    saved = tmp_path / "cells.tif"
    np.testing.assert_array_equal(tifffile.imread(saved), labels.data)
    with open(tmp_path / "cells.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["index"] for row in table] == ["1", "2"]
    assert [int(row["area"]) for row in table] == [int((labels.data == i).sum()) for i in (1, 2)]

    controller.delete_object(2)
    questions = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args: questions.append(args[2]) or QMessageBox.StandardButton.No)
    assert widget.save_labels() == []  # refused: the files stay as they were
    assert "cells.tif and cells.csv already exist" in questions[0]
    assert (tifffile.imread(saved) == 2).any()
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.StandardButton.Yes)
    widget.save_labels()
    np.testing.assert_array_equal(tifffile.imread(saved), labels.data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv", "cells.tif"]  # no temporaries left


def test_a_closed_list_stops_following(qtbot, annotated):
    viewer, controller, widget, _ = annotated
    widget.close()
    controller.delete_object(1)  # would refill a closed widget's table
    assert [r[0] for r in rows(widget)] == ["1", "2"]
