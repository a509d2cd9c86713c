"""GUI tests of Segment volume: "Link planes into 3D objects" in the Segment everything widget.

The widget is docked through the manifest, the trained tiny model chosen as a checkpoint
file, the box ticked, Run clicked; the test waits for Run to be enabled again. Under Xvfb:
    xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/qt/test_segment_volume_widget.py
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels
from test_segment_everything_widget import (
    choose_checkpoint,
    open_widget,
)

from napari_sam._napari.volume_segmentation import LINK_TEXT, describe_volume
from napari_sam.engine.datasets.synthetic import synthetic_volume

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 300_000  # 5 slices with the tiny model: ~20 s alone, minutes on a machine shared by many jobs


@pytest.fixture(scope="module")
def stack():
    return synthetic_volume((5, 128, 128), seed=5, z_spacing=2.0)


def stack_widget(make_napari_viewer, stack, checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack.image, name="stack", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    widget = open_widget(viewer)
    choose_checkpoint(widget, checkpoint)
    widget.points_per_side.value = 8
    widget.pred_iou_thresh.value = 0.5  # the trained test model's scores stay below SAM's 0.88
    return viewer, widget, image


def test_link_planes_gives_a_new_labels_layer_of_3d_objects_with_one_id_through_the_slices(
    make_napari_viewer, qtbot, stack, trained_model_path
):
    viewer, widget, image = stack_widget(make_napari_viewer, stack, trained_model_path)
    assert widget.link_planes.enabled and widget.link_planes.text == LINK_TEXT
    widget.link_planes.value = True
    assert widget.all_planes.value  # linking needs every plane
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    (layer,) = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert layer.name == "stack volume"
    data = np.asarray(layer.data)
    assert data.shape == stack.image.shape
    np.testing.assert_allclose(layer.data_to_world((1, 2, 3)), image.data_to_world((1, 2, 3)))
    ids = np.unique(data[data > 0])
    extents = {int(i): int((data == i).any(axis=(1, 2)).sum()) for i in ids}
    spanning = [i for i, extent in extents.items() if extent >= 3]
    assert len(spanning) >= 3, f"objects linked through >= 3 slices: {extents}"
    # a linked object is one true object: on each slice it mostly covers the same true id
    for label_id in spanning:
        truth = stack.labels[data == label_id]
        values, counts = np.unique(truth[truth > 0], return_counts=True)
        assert len(values) and counts.max() / (data == label_id).sum() > 0.6
    assert widget.status.value.startswith(describe_volume(data))


def test_cancel_stops_between_slices_and_adds_no_layer(make_napari_viewer, qtbot, stack, trained_model_path):
    viewer, widget, _ = stack_widget(make_napari_viewer, stack, trained_model_path)
    widget.link_planes.value = True
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.status.value.startswith("slice 1 / 5"), timeout=RUN_TIMEOUT_MS)
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert widget.status.value.startswith("Cancelled after") and widget.status.value.endswith("of 5 slices.")
    assert not [layer for layer in viewer.layers if isinstance(layer, Labels)]


def test_link_planes_is_offered_for_stacks_only_and_unticking_all_planes_unticks_it(
    make_napari_viewer, stack, trained_model_path
):
    viewer, widget, _ = stack_widget(make_napari_viewer, stack, trained_model_path)
    widget.link_planes.value = True
    widget.all_planes.value = False
    assert not widget.link_planes.value
    viewer.add_image(np.zeros((40, 40), np.float32), name="flat")
    widget.image_choice.value = viewer.layers["flat"]
    assert not widget.link_planes.enabled and not widget.link_planes.value


def test_describe_volume_counts_objects_and_their_extent():
    labels = np.zeros((4, 5, 5), int)
    labels[0:3, 1, 1] = 1
    labels[1, 3, 3] = 2
    assert describe_volume(labels) == "2 3D objects (1 to 3 slices each)"
    assert describe_volume(np.zeros((2, 3, 3), int)) == "no objects"
