"""The annotator's class picker: objects committed under two classes, boxes of a Shapes layer
segmented with their classes, the labels saved through the writers (File > Save Selected Layers
as .json and .txt), and the files checked with pycocotools and a plain YOLO parse."""

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


def box_around(labels: np.ndarray, target: int) -> np.ndarray:
    rows, cols = np.nonzero(labels == target)
    return np.array([[rows.min() - 2, cols.min() - 2], [rows.max() + 2, cols.max() + 2]], float)


def test_classes_from_the_picker_and_a_shapes_layer_saved_as_coco_and_yolo(
    make_napari_viewer, qtbot, trained_model, tmp_path
):
    from pycocotools.coco import COCO

    sample = synthetic_image((256, 256), seed=13)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(sample.image, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", "Segment Anything annotator")
    assert isinstance(widget, AnnotatorWidget)
    widget.set_model(trained_model, "trained", device="cpu", precision="fp32")
    controller, picker = widget.controller, widget.class_picker
    qtbot.waitUntil(lambda: controller.has_embedding() and not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)
    targets = biggest_objects(sample.labels, 6)

    # 1. the user types a class (a new name joins the list), draws a box around an object, commits
    for target, name in zip(targets[:3], ["nucleus", "nucleus", "debris"], strict=True):
        picker.class_box.setEditText(name)
        assert picker.current_class == name and controller.object_class == name
        controller.boxes_layer.add_rectangles(box_around(sample.labels, target))
        qtbot.waitUntil(lambda: controller.preview_mask().any(), timeout=10_000)
        widget.commit_button.clicked.emit()
    labels = controller.labels_layer
    assert list(labels.features["class"]) == ["nucleus", "nucleus", "debris"]  # ids 1, 2, 3 in commit order
    assert widget.object_list.table.item(2, 2).text() == "debris"  # the Objects list shows it
    # 2. fix one object's class: id 2 becomes a cell
    picker.class_box.setEditText("cell")
    picker.object_id.setValue(2)
    picker.set_button.click()
    assert list(labels.features["class"]) == ["nucleus", "cell", "debris"]
    assert {picker.class_box.itemText(i) for i in range(picker.class_box.count())} >= {NO_CLASS, "nucleus", "debris"}

    # 3. boxes from elsewhere (a detector's output opened as a Shapes layer) with a class feature
    viewer.add_shapes([box_around(sample.labels, t) for t in targets[3:]], shape_type="rectangle",
                      name="detections", features={"class": ["mitosis", "nucleus", "mitosis"]})
    picker.shapes_choice.refresh()
    assert [picker.shapes_choice.itemText(i) for i in range(picker.shapes_choice.count())] == ["detections"]
    picker.segment_button.click()
    assert "Segmented 3 of 3 box(es)" in picker.status.text() and len(controller.boxes_layer.data) == 0
    # committed class by class: ids 4, 5 the mitoses, 6 the nucleus
    assert list(labels.features["class"]) == ["nucleus", "cell", "debris", "mitosis", "mitosis", "nucleus"]
    for label_id, target in zip((4, 6, 5), targets[3:], strict=True):
        found, truth = labels.data == label_id, sample.labels == target
        assert (found & truth).sum() / (found | truth).sum() > 0.6
    labels.undo()  # one undo step per class: the last nucleus goes, the rest stays
    assert set(np.unique(labels.data)) == {0, 1, 2, 3, 4, 5}

    # 4. File > Save Selected Layers as .json and .txt
    viewer.layers.selection.active = labels
    viewer.layers.save(str(tmp_path / "cells.json"), selected=True, plugin="napari-sam")
    viewer.layers.save(str(tmp_path / "cells.txt"), selected=True, plugin="napari-sam")
    expected = {1: "nucleus", 2: "cell", 3: "debris", 4: "mitosis", 5: "mitosis"}
    api = COCO(str(tmp_path / "cells.json"))
    names = {c["id"]: c["name"] for c in api.loadCats(api.getCatIds())}
    by_id = {a["label_id"]: a for a in api.loadAnns(api.getAnnIds())}
    assert {i: names[a["category_id"]] for i, a in by_id.items()} == expected
    for label_id, annotation in by_id.items():
        np.testing.assert_array_equal(api.annToMask(annotation).astype(bool), labels.data == label_id)
    assert "names:\n  0: cell\n  1: debris\n  2: mitosis\n  3: nucleus\n" in (tmp_path / "data.yaml").read_text()
    lines = (tmp_path / "cells.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["3", "0", "1", "2", "2"]  # by class index, in id order
