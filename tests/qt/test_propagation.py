"""GUI tests of Propagate in the annotator: a click on one slice, Propagate, commit, undo, redo, correct, cancel.

Real mouse clicks and key presses on the canvas, the trained tiny model, a small
synthetic stack; the propagation runs in a napari worker. Run under Xvfb:
    xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/qt/test_propagation.py
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import Qt
from test_annotator_widget import (
    click,
    object_center,
    open_widget,
    press,
    wait_for_embedding,
    world_of,
)

from napari_sam._napari.propagation import PREVIEW_NAME, propagation_of
from napari_sam.engine.datasets.synthetic import synthetic_volume

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 120_000
MIN_IOU = 0.5  # 3D IoU with the truth (the engine's tests hold the quality bar)
PROPAGATE = "napari-sam:propagate"


@pytest.fixture(scope="module")
def stack():
    return synthetic_volume((8, 128, 128), seed=5, z_spacing=2.0)


def tall_object(labels: np.ndarray) -> tuple[int, int]:
    """(id, widest plane) of the object spanning most planes without touching the border."""
    best = None
    for label_id in np.unique(labels[labels > 0]):
        mask = labels == label_id
        if mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any():
            continue
        extent = int(mask.any(axis=(1, 2)).sum())
        area = mask.sum(axis=(1, 2))
        if best is None or (extent, area.max()) > best[0]:
            best = ((extent, area.max()), int(label_id), int(np.argmax(area)))
    assert best is not None and best[0][0] >= 4, "the synthetic stack has an object on >= 4 slices"
    return best[1], best[2]


def open_on_stack(make_napari_viewer, qtbot, model, stack, plane: int, labels: np.ndarray | None = None):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    image = viewer.add_image(stack.image, name="stack", scale=(2.0, 1.0, 1.0))
    if labels is not None:
        viewer.add_labels(labels, name="cells", scale=(2.0, 1.0, 1.0))
    viewer.dims.set_point(0, plane * 2.0)
    widget = open_widget(viewer)
    if labels is not None:
        widget.labels_choice.value = viewer.layers["cells"]
    widget.set_model(model, "trained", device="cpu", precision="fp32")
    wait_for_embedding(qtbot, widget)
    viewer.reset_view()
    return viewer, widget, image


def click_object(qtbot, viewer, widget, image, stack, label_id: int, plane: int) -> None:
    center = object_center(stack.labels[plane], label_id)
    click(qtbot, viewer, world_of(image, (plane, *center))[1:])
    qtbot.waitUntil(lambda: widget.controller.preview_mask().any(), timeout=RUN_TIMEOUT_MS)


def wait_for_propagation(qtbot, widget) -> None:
    panel = widget.propagation_panel
    qtbot.waitUntil(lambda: not panel.is_running() and not panel.propagation.running, timeout=RUN_TIMEOUT_MS)


def test_click_propagate_commit_one_id_on_several_slices_one_undo_redo(make_napari_viewer, qtbot, trained_model, stack):
    label_id, z = tall_object(stack.labels)
    before = np.zeros(stack.image.shape, dtype=np.uint32)
    before[0, :5, :5] = 4  # an object painted before, elsewhere: it must not change
    viewer, widget, image = open_on_stack(make_napari_viewer, qtbot, trained_model, stack, z, before.copy())
    panel = widget.propagation_panel
    assert panel.isVisible() and panel.propagate_button.text == "Propagate (G)"
    click_object(qtbot, viewer, widget, image, stack, label_id, z)

    press(qtbot, viewer, Qt.Key.Key_G)  # the Propagate key
    assert panel.is_running() and panel.cancel_button.enabled
    wait_for_propagation(qtbot, widget)
    preview = viewer.layers[PREVIEW_NAME]
    shown = np.asarray(preview.data) > 0
    found = propagation_of(widget.controller).planes_found()
    assert len(found) >= 3 and z in found
    assert "spans" in widget.status.text() and panel.commit_button.enabled

    viewer.dims.ndisplay = 3  # the preview is a volume: the 3D view shows it
    rendered = viewer.screenshot(canvas_only=True, flash=False)
    yellow = (rendered[..., 0] > 150) & (rendered[..., 1] > 150) & (rendered[..., 2] < 100)
    assert yellow.sum() > 20
    viewer.dims.ndisplay = 2

    press(qtbot, viewer, Qt.Key.Key_C)  # commit
    labels = viewer.layers["cells"]
    data = np.asarray(labels.data).copy()
    changed = data != before
    assert set(np.unique(data[changed])) == {5}  # one new id, the next free one
    np.testing.assert_array_equal(changed, shown & (before == 0))  # the preview's pixels, nothing else
    assert sorted(np.flatnonzero((data == 5).any(axis=(1, 2)))) == found
    truth = stack.labels == label_id
    assert ((data == 5) & truth).sum() / ((data == 5) | truth).sum() > MIN_IOU
    assert PREVIEW_NAME not in viewer.layers and not panel.commit_button.enabled

    press(qtbot, viewer, Qt.Key.Key_Z, control=True)  # ONE undo removes every slice of it
    np.testing.assert_array_equal(labels.data, before)
    press(qtbot, viewer, Qt.Key.Key_Z, control=True, shift=True)
    np.testing.assert_array_equal(labels.data, data)


def test_a_correction_on_one_slice_re_propagates_from_it_then_commits(make_napari_viewer, qtbot, trained_model, stack):
    label_id, z = tall_object(stack.labels)
    viewer, widget, image = open_on_stack(make_napari_viewer, qtbot, trained_model, stack, z)
    click_object(qtbot, viewer, widget, image, stack, label_id, z)
    widget.propagation_panel.propagate_button.native.click()
    wait_for_propagation(qtbot, widget)
    first = np.asarray(viewer.layers[PREVIEW_NAME].data) > 0
    found = propagation_of(widget.controller).planes_found()
    corrected = max(p for p in found if (stack.labels[p] == label_id).sum() > 30)
    corrected = corrected if corrected != z else min(found)

    viewer.dims.set_point(0, corrected * 2.0)  # the user goes to that slice and clicks the object again
    wait_for_embedding(qtbot, widget)
    click_object(qtbot, viewer, widget, image, stack, label_id, corrected)
    fixed = widget.controller.preview_mask() > 0
    widget.propagation_panel.propagate_button.native.click()
    wait_for_propagation(qtbot, widget)
    second = np.asarray(viewer.layers[PREVIEW_NAME].data) > 0
    np.testing.assert_array_equal(second[corrected], fixed)
    other_side = range(0, z) if corrected > z else range(z + 1, len(first))
    for plane in other_side:
        np.testing.assert_array_equal(second[plane], first[plane])  # kept, not recomputed

    widget.commit_button.native.click()  # the annotator's Commit commits the 3D object shown
    (labels,) = [layer for layer in viewer.layers if isinstance(layer, Labels) and layer.name == "SAM labels"]
    np.testing.assert_array_equal(labels.data == 1, second)
    assert labels.data.max() == 1
    assert len(widget.controller.points_layer.data) == 0  # the prompts of both slices are cleared


def test_cancel_keeps_the_slices_done_and_discard_drops_them(make_napari_viewer, qtbot, trained_model, stack):
    label_id, z = tall_object(stack.labels)
    viewer, widget, image = open_on_stack(make_napari_viewer, qtbot, trained_model, stack, z)
    click_object(qtbot, viewer, widget, image, stack, label_id, z)
    panel = widget.propagation_panel
    panel.propagate_button.native.click()
    qtbot.waitUntil(lambda: len(panel.propagation.planes_found()) >= 1, timeout=RUN_TIMEOUT_MS)
    panel.cancel_button.native.click()
    wait_for_propagation(qtbot, widget)
    text = widget.status.text()
    assert text.startswith("Cancelled") or "spans" in text  # the last plane may have finished meanwhile
    assert panel.discard_button.enabled
    panel.discard_button.native.click()
    assert PREVIEW_NAME not in viewer.layers and not panel.commit_button.enabled
    assert widget.controller.labels_layer is None  # nothing written


def test_propagate_without_an_object_or_on_a_2d_image_says_why_and_writes_nothing(
    make_napari_viewer, qtbot, tiny_model, notifications
):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((3, 64, 64), np.float32), name="stack")
    mine = viewer.add_labels(np.full((3, 64, 64), 2, np.uint8), name="mine")
    widget = open_widget(viewer)
    widget.labels_choice.value = mine
    widget.set_model(tiny_model, "tiny", device="cpu", precision="fp32")
    wait_for_embedding(qtbot, widget)
    press(qtbot, viewer, Qt.Key.Key_G)
    assert "Nothing to propagate" in widget.status.text()
    assert any("Nothing to propagate" in str(n.message) for n in notifications)
    assert (mine.data == 2).all() and PREVIEW_NAME not in viewer.layers

    viewer.add_image(np.zeros((64, 64), np.float32), name="flat")
    widget.image_choice.value = viewer.layers["flat"]
    assert not widget.propagation_panel.isVisible()  # no slices: no Propagate controls
    press(qtbot, viewer, Qt.Key.Key_G)
    assert "is 2D" in widget.status.text()
    assert any("is 2D" in str(n.message) for n in notifications)
    assert (mine.data == 2).all() and PREVIEW_NAME not in viewer.layers


def test_the_propagate_key_is_a_napari_shortcut_that_can_be_remapped(make_napari_viewer):
    from napari._qt.widgets.qt_keyboard_settings import ShortcutEditor
    from napari.utils.action_manager import action_manager

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 32), np.float32))
    widget = open_widget(viewer)
    editor = ShortcutEditor()  # what Preferences > Shortcuts shows
    assert PROPAGATE in editor.key_bindings_strs[editor.VIEWER_KEYBINDINGS]
    editor.deleteLater()
    assert "propagate the object through the slices" in widget.bindings_label.text()
    previous = action_manager.unbind_shortcut(PROPAGATE)
    try:
        action_manager.bind_shortcut(PROPAGATE, "K")  # as Preferences > Shortcuts does
        assert widget.propagation_panel.propagate_button.text == "Propagate (K)"
    finally:
        action_manager.unbind_shortcut(PROPAGATE)
        for key in previous or ["G"]:
            action_manager.bind_shortcut(PROPAGATE, key)
