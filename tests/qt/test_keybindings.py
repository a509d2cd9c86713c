"""The annotator's keys as napari knows them: in Preferences > Shortcuts, remappable, whichever layer is selected.

Run with a display, e.g.
    xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/qt/test_keybindings.py
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.action_manager import action_manager
from qtpy.QtCore import Qt
from test_annotator_widget import (
    click,
    drag,
    object_center,
    open_widget,
    press,
    roundest_objects,
    start,
    wait_for_embedding,
    world_of,
)

from napari_sam.engine.datasets.synthetic import synthetic_image

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def nuclei():
    return synthetic_image((256, 256), seed=13, style="mixed")  # the trained model's input size


COMMIT = "napari-sam:commit"


def test_the_keys_are_in_napari_shortcut_preferences(make_napari_viewer):
    from napari._qt.widgets.qt_keyboard_settings import ShortcutEditor

    viewer = make_napari_viewer()
    open_widget(viewer)
    editor = ShortcutEditor()  # what Preferences > Shortcuts shows
    viewer_actions = editor.key_bindings_strs[editor.VIEWER_KEYBINDINGS]
    for name in (
        COMMIT,
        "napari-sam:clear_prompts",
        "napari-sam:next_candidate",
        "napari-sam:previous_candidate",
    ):
        assert name in viewer_actions
    assert [str(key) for key in action_manager._shortcuts[COMMIT]] == ["C"]
    editor.deleteLater()


def test_c_commits_with_the_image_layer_selected(
    make_napari_viewer, qtbot, trained_model, nuclei
):
    viewer, widget, image = start(
        make_napari_viewer, qtbot, trained_model, nuclei.image
    )
    target = roundest_objects(nuclei.labels, 1)[0]
    click(qtbot, viewer, world_of(image, object_center(nuclei.labels, target)))
    preview = widget.controller.preview_mask() > 0
    assert preview.any()
    viewer.layers.selection.active = (
        image  # napari's Image layer binds C to auto-contrast
    )
    contrast = tuple(image.contrast_limits)
    press(qtbot, viewer, Qt.Key.Key_C)
    labels = widget.controller.labels_layer
    assert labels is not None
    np.testing.assert_array_equal(labels.data == 1, preview)
    assert "Committed" in widget.status.text()
    assert tuple(image.contrast_limits) == contrast


def test_after_a_box_commit_the_next_click_adds_a_point(make_napari_viewer, qtbot, trained_model, nuclei):
    viewer, widget, image = start(make_napari_viewer, qtbot, trained_model, nuclei.image)
    controller = widget.controller
    first, second, third = roundest_objects(nuclei.labels, 3)
    click(qtbot, viewer, world_of(image, object_center(nuclei.labels, first)))
    press(qtbot, viewer, Qt.Key.Key_C)  # the labels layer exists from here on
    rows, cols = np.nonzero(nuclei.labels == second)
    viewer.layers.selection.active = controller.boxes_layer
    press(qtbot, viewer, Qt.Key.Key_R)
    drag(
        qtbot,
        viewer,
        world_of(image, (rows.min() - 2, cols.min() - 2)),
        world_of(image, (rows.max() + 2, cols.max() + 2)),
    )
    assert len(controller.boxes_layer.data) == 1
    press(qtbot, viewer, Qt.Key.Key_C)
    assert controller.labels_layer.data.max() == 2
    assert viewer.layers.selection.active == controller.points_layer
    assert controller.points_layer.mode == "add"
    click(qtbot, viewer, world_of(image, object_center(nuclei.labels, third)))
    assert len(controller.points_layer.data) == 1 and len(controller.boxes_layer.data) == 0


def test_an_image_added_after_the_widget_opens_takes_clicks(
    make_napari_viewer, qtbot, tiny_model
):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    widget = open_widget(viewer)
    widget.set_model(tiny_model, "tiny", device="cpu", precision="fp32")
    image = viewer.add_image(
        np.random.default_rng(0).random((64, 64)).astype(np.float32)
    )
    qtbot.waitUntil(lambda: widget.controller.points_layer is not None, timeout=5000)
    wait_for_embedding(qtbot, widget)
    viewer.reset_view()
    assert viewer.layers.selection.active == widget.controller.points_layer
    click(qtbot, viewer, world_of(image, (30, 30)))
    assert len(widget.controller.points_layer.data) == 1


def test_a_remapped_key_works_and_shows_in_the_dock(
    make_napari_viewer, qtbot, trained_model, nuclei
):
    viewer, widget, image = start(
        make_napari_viewer, qtbot, trained_model, nuclei.image
    )
    previous = action_manager.unbind_shortcut(COMMIT)
    try:
        action_manager.bind_shortcut(COMMIT, "K")  # as Preferences > Shortcuts does
        assert widget.commit_button.text == "Commit (K)"
        assert "<b>K</b>" in widget.bindings_label.text()
        target = roundest_objects(nuclei.labels, 1)[0]
        click(qtbot, viewer, world_of(image, object_center(nuclei.labels, target)))
        viewer.layers.selection.active = image
        press(qtbot, viewer, Qt.Key.Key_K)
        assert (
            widget.controller.labels_layer is not None
            and widget.controller.labels_layer.data.max() == 1
        )
    finally:
        action_manager.unbind_shortcut(COMMIT)
        for key in previous or ["C"]:
            action_manager.bind_shortcut(COMMIT, key)
    assert widget.commit_button.text == "Commit (C)"
