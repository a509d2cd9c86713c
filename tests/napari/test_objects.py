"""The committed objects of the annotator (no Qt): scores and areas in the labels' features,
delete and re-segment as one undo step each, empty masks, saving.

Uses :class:`DiscPredictor` (tests/napari/test_napari_controller.py): a single click gives three
candidates of radius r, r/2, 1.5 r with scores 0.5, 0.9, 0.7; the best (radius 3) is shown.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from test_napari_controller import DiscPredictor, annotator, expected_disc

from napari_sam.engine.errors import InputError

SHAPE = (64, 80)


class EmptyPredictor(DiscPredictor):
    """Finds nothing: every mask is empty (a click on the background of a poor model)."""

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        masks, scores, logits = super().predict(points, labels, box, mask_input, multimask)
        return np.zeros_like(masks), scores, logits


@pytest.fixture
def viewer():
    return ViewerModel()


def commit_at(controller, position, negatives=()) -> list[int]:
    controller.add_point(position)
    for negative in negatives:
        controller.add_point(negative, positive=False)
    return controller.commit()


def test_empty_mask_commits_nothing_and_creates_no_labels_layer(viewer):
    controller, _ = annotator(viewer, np.zeros(SHAPE, np.float32), predictor=EmptyPredictor())
    statuses = []
    controller.status_changed.connect(statuses.append)
    controller.add_point([30, 40])
    assert controller.commit() == []
    assert statuses[-1] == "The mask is empty: nothing to commit."
    assert controller.labels_layer is None
    assert [layer.name for layer in viewer.layers if layer.name == "SAM labels"] == []


def test_commit_records_score_area_and_plane_in_the_features(viewer):
    controller, _ = annotator(viewer, np.zeros((3, *SHAPE), np.float32))
    viewer.dims.set_point(0, 1)
    assert commit_at(controller, [1, 30, 40]) == [1]  # one click: radius 3, score 0.9
    assert commit_at(controller, [1, 10, 10], negatives=[[1, 50, 70]]) == [2]  # two points: radius 4, score 0.8
    features = controller.labels_layer.features
    assert features["index"].tolist() == [1, 2]
    assert features["area"].tolist() == [expected_disc(SHAPE, (30, 40), 3).sum(), expected_disc(SHAPE, (10, 10), 4).sum()]
    assert features["score"].tolist() == pytest.approx([0.9, 0.8])
    assert features["class"].tolist() == ["", ""]
    assert features["plane"].tolist() == ["slice 1 (axis -3)"] * 2  # named as napari names the unlabelled axis


def test_delete_is_one_undo_step_and_the_list_follows_undo(viewer):
    controller, _ = annotator(viewer, np.zeros(SHAPE, np.float32))
    commit_at(controller, [30, 40])
    commit_at(controller, [10, 10])
    labels = controller.labels_layer
    before = labels.data.copy()
    controller.delete_object(1)
    assert not (labels.data == 1).any() and (labels.data == 2).sum() == (before == 2).sum()
    assert controller.refresh_objects()["index"].tolist() == [2]
    labels.undo()  # ONE undo brings the whole object back, score included
    np.testing.assert_array_equal(labels.data, before)
    table = controller.refresh_objects()
    assert table["index"].tolist() == [1, 2] and table["score"].tolist() == pytest.approx([0.9, 0.9])
    labels.undo()  # undoes the second commit: id 2 leaves the list
    assert controller.refresh_objects()["index"].tolist() == [1]
    with pytest.raises(InputError, match="no object 7"):
        controller.delete_object(7)


def test_resegment_keeps_the_id_replaces_its_pixels_in_one_undo_step(viewer):
    controller, _ = annotator(viewer, np.zeros(SHAPE, np.float32))
    commit_at(controller, [30, 40])
    commit_at(controller, [10, 10])
    labels = controller.labels_layer
    before = labels.data.copy()
    controller.start_resegment(1)
    assert controller.resegment_id == 1
    assert commit_at(controller, [40, 60], negatives=[[5, 75]]) == [1]  # radius 4 elsewhere, score 0.8
    np.testing.assert_array_equal(labels.data == 1, expected_disc(SHAPE, (40, 60), 4))
    np.testing.assert_array_equal(labels.data == 2, before == 2)
    assert controller.resegment_id is None  # back to normal commits
    table = controller.refresh_objects()
    assert table["index"].tolist() == [1, 2] and table.loc[0, "score"] == pytest.approx(0.8)
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    assert commit_at(controller, [50, 20]) == [3]  # normal commits again: a new id


def test_resegment_of_several_objects_is_refused(viewer):
    controller, _ = annotator(viewer, np.zeros(SHAPE, np.float32))
    commit_at(controller, [30, 40])
    controller.start_resegment(1)
    for corner in ((2, 2), (40, 60)):
        rows, cols = corner
        controller.boxes_layer.add_rectangles(np.array([[rows, cols], [rows + 5, cols + 5]], float))
    with pytest.raises(InputError, match="one object"):
        controller.commit()
    assert controller.resegment_id == 1
    controller.cancel_resegment()
    assert controller.resegment_id is None


def test_show_object_moves_the_slider_to_its_plane(viewer):
    controller, _ = annotator(viewer, np.zeros((4, *SHAPE), np.float32))
    viewer.dims.set_point(0, 2)
    commit_at(controller, [2, 30, 40])
    viewer.dims.set_point(0, 0)
    controller.show_object(1)
    assert viewer.dims.point[0] == 2
    assert controller.labels_layer.show_selected_label and controller.labels_layer.selected_label == 1
    controller.show_all_objects()
    assert not controller.labels_layer.show_selected_label


def test_resegment_on_another_slice_extends_the_object_there_only(viewer):
    controller, _ = annotator(viewer, np.zeros((3, *SHAPE), np.float32))
    viewer.dims.set_point(0, 1)
    commit_at(controller, [1, 30, 40])
    labels = controller.labels_layer
    plane_1 = labels.data[1].copy()
    viewer.dims.set_point(0, 2)
    controller.start_resegment(1)
    assert commit_at(controller, [2, 32, 42]) == [1]
    np.testing.assert_array_equal(labels.data[1], plane_1)  # the slice where it was stays
    np.testing.assert_array_equal(labels.data[2] == 1, expected_disc(SHAPE, (32, 42), 3))
    table = controller.refresh_objects()
    assert table["area"].tolist() == [2 * expected_disc(SHAPE, (30, 40), 3).sum()]
    assert table["plane"].tolist() == ["slice 2 (axis -3)"]  # where it was last committed
