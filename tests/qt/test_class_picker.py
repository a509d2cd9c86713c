"""The annotator's class picker: objects committed under two classes, saved through the writers
(File > Save Selected Layers as .json and .txt), and the files checked."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._napari.annotator_widget import AnnotatorWidget
from napari_sam._napari.class_picker import NO_CLASS
from napari_sam.engine.datasets.synthetic import synthetic_image

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
EMBED_TIMEOUT_MS = 60_000


def biggest_objects(labels: np.ndarray, count: int) -> list[int]:
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(-areas)][:count]]


def test_objects_of_two_classes_saved_as_coco_and_yolo(make_napari_viewer, qtbot, trained_model, tmp_path):
    from pycocotools.coco import COCO

    sample = synthetic_image((256, 256), seed=13)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(sample.image, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", "Segment Anything annotator")
    assert isinstance(widget, AnnotatorWidget)
    widget.set_model(trained_model, "trained", device="cpu", precision="fp32")
    controller, picker = widget.controller, widget.class_picker
    qtbot.waitUntil(lambda: controller.has_embedding() and not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)

    targets = biggest_objects(sample.labels, 3)
    chosen = ["nucleus", "nucleus", "debris"]
    for target, name in zip(targets, chosen, strict=True):
        # the user types a class (a new name is added to the list) ...
        picker.class_box.setEditText(name)
        assert picker.current_class == name and controller.object_class == name
        rows, cols = np.nonzero(sample.labels == target)
        # ... draws a box around the object and commits
        controller.boxes_layer.add_rectangles(np.array([[rows.min() - 2, cols.min() - 2], [rows.max() + 2, cols.max() + 2]]))
        qtbot.waitUntil(lambda: controller.preview_mask().any(), timeout=10_000)
        widget.commit_button.clicked.emit()
    labels = controller.labels_layer
    assert list(labels.features["class"]) == chosen  # ids 1, 2, 3 in commit order
    assert widget.object_list.table.item(2, 2).text() == "debris"  # the Objects list shows it
    # fix one object's class: id 2 becomes a cell
    picker.class_box.setEditText("cell")
    picker.object_id.setValue(2)
    picker.set_button.click()
    assert list(labels.features["class"]) == ["nucleus", "cell", "debris"]
    assert {picker.class_box.itemText(i) for i in range(picker.class_box.count())} >= {NO_CLASS, "nucleus", "debris"}

    viewer.layers.selection.active = labels
    viewer.layers.save(str(tmp_path / "cells.json"), selected=True, plugin="napari-sam")
    viewer.layers.save(str(tmp_path / "cells.txt"), selected=True, plugin="napari-sam")

    api = COCO(str(tmp_path / "cells.json"))
    names = {c["id"]: c["name"] for c in api.loadCats(api.getCatIds())}
    by_id = {a["label_id"]: a for a in api.loadAnns(api.getAnnIds())}
    assert {i: names[a["category_id"]] for i, a in by_id.items()} == {1: "nucleus", 2: "cell", 3: "debris"}
    for label_id, annotation in by_id.items():
        np.testing.assert_array_equal(api.annToMask(annotation).astype(bool), labels.data == label_id)
    lines = (tmp_path / "cells.txt").read_text().splitlines()
    yaml_names = (tmp_path / "data.yaml").read_text()
    assert "0: cell\n  1: debris\n  2: nucleus" in yaml_names
    assert [line.split()[0] for line in lines] == ["2", "0", "1"]  # nucleus, cell, debris by class index


def test_rectangles_of_a_shapes_layer_become_objects_of_their_classes(make_napari_viewer, qtbot, trained_model):
    sample = synthetic_image((256, 256), seed=13)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(sample.image, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", "Segment Anything annotator")
    widget.set_model(trained_model, "trained", device="cpu", precision="fp32")
    controller, picker = widget.controller, widget.class_picker
    qtbot.waitUntil(lambda: controller.has_embedding() and not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)
    targets = biggest_objects(sample.labels, 3)
    rectangles = []
    for target in targets:
        rows, cols = np.nonzero(sample.labels == target)
        rectangles.append(np.array([[rows.min() - 2, cols.min() - 2], [rows.max() + 2, cols.max() + 2]], float))
    # boxes from elsewhere (a detector's output opened in napari), with a class feature
    viewer.add_shapes(rectangles, shape_type="rectangle", name="detections",
                      features={"class": ["mitosis", "nucleus", "mitosis"]})
    picker.shapes_choice.refresh()
    assert [picker.shapes_choice.itemText(i) for i in range(picker.shapes_choice.count())] == ["detections"]
    picker.segment_button.click()
    labels = controller.labels_layer
    assert list(labels.features["class"]) == ["mitosis", "mitosis", "nucleus"]  # committed class by class
    for label_id, target in zip((1, 3, 2), targets, strict=True):
        found, truth = labels.data == label_id, sample.labels == target
        assert (found & truth).sum() / (found | truth).sum() > 0.6
    assert len(controller.boxes_layer.data) == 0 and "Segmented 3 of 3 box(es)" in picker.status.text()
    labels.undo()  # one undo step per class: the nucleus goes, the mitoses stay
    assert set(np.unique(labels.data)) == {0, 1, 2}
