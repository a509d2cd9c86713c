"""GUI tests of the dock widget under Xvfb: what a user does, with real mouse clicks and key presses.

Run with a display, e.g.
    xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/qt/
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt, QTimer

from napari_sam._napari.annotator_widget import AnnotatorWidget
from napari_sam._napari.demo import PLUGIN, WIDGET
from napari_sam._napari.model_picker import LOCAL_FILE
from napari_sam.engine import Predictor
from napari_sam.engine.datasets.synthetic import synthetic_image, synthetic_volume

pytestmark = pytest.mark.gui
EMBED_TIMEOUT_MS = 60_000
BOX_IOU = 0.6  # mean IoU of box-only masks with the true objects, for the tiny model trained here


# ----------------------------------------------------------------- helpers
def open_widget(viewer) -> AnnotatorWidget:
    """Dock the annotator through the plugin's manifest, as the Plugins / Layers > Segment menu does."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, AnnotatorWidget)
    return widget


def canvas_of(viewer):
    return viewer.window._qt_viewer.canvas.native


def world_to_canvas(viewer, world) -> QPoint:
    """Canvas pixel showing the 2D world position ``world`` (row, col) with napari's 2D camera."""
    canvas = canvas_of(viewer)
    center = np.asarray(viewer.scene.camera.center)[-2:]
    row, col = (np.asarray(world, dtype=float) - center) * viewer.scene.camera.zoom + [
        canvas.height() / 2,
        canvas.width() / 2,
    ]
    return QPoint(int(round(col)), int(round(row)))


def click(qtbot, viewer, world, shift=False, button=Qt.MouseButton.LeftButton):
    modifier = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    qtbot.mouseClick(canvas_of(viewer), button, modifier, world_to_canvas(viewer, world))


def press(qtbot, viewer, key, shift=False, control=False):
    canvas = canvas_of(viewer)
    canvas.setFocus()
    modifier = Qt.KeyboardModifier.NoModifier
    if shift:
        modifier |= Qt.KeyboardModifier.ShiftModifier
    if control:
        modifier |= Qt.KeyboardModifier.ControlModifier
    qtbot.keyClick(canvas, key, modifier)


def world_of(layer, data_position):
    return np.asarray(layer.data_to_world(data_position), dtype=float)


def wait_for_embedding(qtbot, widget):
    qtbot.waitUntil(lambda: widget.controller.has_embedding() and not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)


def start(make_napari_viewer, qtbot, model, image, **layer_kwargs):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    layer = viewer.add_image(image, **layer_kwargs)
    widget = open_widget(viewer)
    widget.set_model(model, "test model", device="cpu", precision="fp32")
    wait_for_embedding(qtbot, widget)
    viewer.reset_view()
    return viewer, widget, layer


def object_center(labels: np.ndarray, object_id: int) -> np.ndarray:
    """A pixel deep inside the object (the one farthest from its border)."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(labels == object_id, 1))[1:-1, 1:-1]
    return np.array(np.unravel_index(np.argmax(distance), labels.shape), dtype=float)


def roundest_objects(labels: np.ndarray, count: int) -> list[int]:
    """Ids of the ``count`` objects with the largest inscribed disc (big, whole, not cut by the border)."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(labels, 1) > 0)[1:-1, 1:-1]
    ids = np.unique(labels[labels > 0])
    radii = ndimage.maximum(depth, labels, ids)
    inside = [i for i in ids if not _touches_border(labels == i)]
    return sorted(inside, key=lambda i: -radii[list(ids).index(i)])[:count]


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def nuclei():
    return synthetic_image((256, 256), seed=13, style="mixed")  # 256: the trained model's input size


# ------------------------------------------------------------- user flow
def test_click_commit_undo_redo_second_object(make_napari_viewer, qtbot, trained_model, nuclei):
    viewer, widget, image = start(make_napari_viewer, qtbot, trained_model, nuclei.image)
    controller = widget.controller
    first, second = roundest_objects(nuclei.labels, 2)

    click(qtbot, viewer, world_of(image, object_center(nuclei.labels, first)))
    assert len(controller.points_layer.data) == 1
    preview = controller.preview_mask() > 0
    assert iou(preview, nuclei.labels == first) > 0.5
    assert "score" in widget.preview_status.text().lower()

    press(qtbot, viewer, Qt.Key.Key_C)
    labels = controller.labels_layer
    assert labels is not None and widget.labels_choice.value.unique_id == labels.unique_id
    np.testing.assert_array_equal(labels.data, preview.astype(labels.data.dtype))
    assert len(controller.points_layer.data) == 0 and controller.preview_mask().sum() == 0

    press(qtbot, viewer, Qt.Key.Key_Z, control=True)
    assert labels.data.max() == 0
    press(qtbot, viewer, Qt.Key.Key_Z, shift=True, control=True)
    np.testing.assert_array_equal(labels.data == 1, preview)

    click(qtbot, viewer, world_of(image, object_center(nuclei.labels, second)))
    second_preview = controller.preview_mask() > 0
    widget.commit_button.clicked.emit()
    assert labels.data.max() == 2
    np.testing.assert_array_equal(labels.data == 1, preview)  # the first object is not overwritten
    np.testing.assert_array_equal(labels.data == 2, second_preview & ~preview)


def test_the_docked_object_list_follows_commits_and_undo(make_napari_viewer, qtbot, trained_model, nuclei):
    viewer, widget, image = start(make_napari_viewer, qtbot, trained_model, nuclei.image)
    first, second = roundest_objects(nuclei.labels, 2)
    table = widget.object_list.table
    for target in (first, second):
        click(qtbot, viewer, world_of(image, object_center(nuclei.labels, target)))
        press(qtbot, viewer, Qt.Key.Key_C)
    qtbot.waitUntil(lambda: table.rowCount() == 2, timeout=5000)
    areas = widget.controller.labels_layer.features["area"].tolist()
    assert [int(table.item(row, 0).text()) for row in range(2)] == [1, 2]
    assert areas == [int((widget.controller.labels_layer.data == i).sum()) for i in (1, 2)]
    press(qtbot, viewer, Qt.Key.Key_Z, control=True)  # the second commit is undone: its row goes
    qtbot.waitUntil(lambda: table.rowCount() == 1, timeout=5000)


def test_negative_click_shrinks_the_mask(make_napari_viewer, qtbot, trained_model, nuclei):
    viewer, widget, image = start(make_napari_viewer, qtbot, trained_model, nuclei.image)
    controller = widget.controller
    excluded = []
    for target in roundest_objects(nuclei.labels, 3):
        center = object_center(nuclei.labels, target)
        click(qtbot, viewer, world_of(image, center))
        before = controller.preview_mask() > 0
        # a negative click on the far part of the mask, a little inside it
        rows, cols = np.nonzero(before)
        far = np.argmax((rows - center[0]) ** 2 + (cols - center[1]) ** 2)
        negative = center + 0.7 * (np.array([rows[far], cols[far]]) - center)
        click(qtbot, viewer, world_of(image, negative), shift=True)
        assert list(controller.point_labels()) == [1, 0]
        after = controller.preview_mask() > 0
        assert 0 < after.sum() < before.sum()
        excluded.append(not after[tuple(np.round(negative).astype(int))])
        press(qtbot, viewer, Qt.Key.Key_C, shift=True)  # clear the prompts
        assert len(controller.points_layer.data) == 0
    assert sum(excluded) >= 2  # the negatively clicked pixel leaves the mask


def drag(qtbot, viewer, start_world, end_world):
    """Press at one world position, move with the button held, release at another (drawing a rectangle)."""
    from qtpy.QtCore import QEvent, QPointF
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    canvas = canvas_of(viewer)
    start, end = world_to_canvas(viewer, start_world), world_to_canvas(viewer, end_world)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    qtbot.mousePress(canvas, left, Qt.KeyboardModifier.NoModifier, start)
    qtbot.wait(15)
    for fraction in [*np.linspace(0.1, 1.0, 8), 1.0]:
        position = QPointF(start + (end - start) * float(fraction))
        # QTest.mouseMove carries no pressed buttons; a drag needs them
        move = QMouseEvent(
            QEvent.Type.MouseMove, position, canvas.mapToGlobal(position), none, left, Qt.KeyboardModifier.NoModifier
        )
        QApplication.sendEvent(canvas, move)
        qtbot.wait(15)  # vispy drops mouse moves less than 10 ms apart
    qtbot.mouseRelease(canvas, left, Qt.KeyboardModifier.NoModifier, end)


def test_box_alone_segments(make_napari_viewer, qtbot, trained_model, nuclei):
    viewer, widget, image = start(make_napari_viewer, qtbot, trained_model, nuclei.image)
    controller = widget.controller
    targets = roundest_objects(nuclei.labels, 3)
    scores = []
    for number, target in enumerate(targets, start=1):
        rows, cols = np.nonzero(nuclei.labels == target)
        viewer.layers.selection.active = viewer.layers["SAM boxes"]
        press(qtbot, viewer, Qt.Key.Key_R)  # napari's key for drawing rectangles
        assert controller.boxes_layer.mode == "add_rectangle"
        drag(
            qtbot,
            viewer,
            world_of(image, (rows.min() - 2, cols.min() - 2)),
            world_of(image, (rows.max() + 2, cols.max() + 2)),
        )
        assert len(controller.boxes_layer.data) == 1 and len(controller.points_layer.data) == 0
        preview = controller.preview_mask() > 0
        scores.append(iou(preview, nuclei.labels == target))
        committed = (
            np.zeros(preview.shape, bool) if controller.labels_layer is None else controller.labels_layer.data > 0
        )
        press(qtbot, viewer, Qt.Key.Key_C)
        np.testing.assert_array_equal(controller.labels_layer.data == number, preview & ~committed)
        assert len(controller.boxes_layer.data) == 0
    assert np.mean(scores) > BOX_IOU


def test_cycling_candidates_changes_the_preview(make_napari_viewer, qtbot, tiny_model, nuclei):
    viewer, widget, image = start(make_napari_viewer, qtbot, tiny_model, nuclei.image)
    click(qtbot, viewer, world_of(image, (80, 80)))
    shown = [widget.controller.preview_mask().copy()]
    texts = [widget.preview_status.text()]
    for _ in range(3):
        press(qtbot, viewer, Qt.Key.Key_N)
        shown.append(widget.controller.preview_mask().copy())
        texts.append(widget.preview_status.text())
    assert texts[0].startswith("Candidate 1/3") and texts[1].startswith("Candidate 2/3")
    assert texts[3] == texts[0]  # wrapped around
    assert not np.array_equal(shown[0], shown[1]) or not np.array_equal(shown[1], shown[2])
    np.testing.assert_array_equal(shown[3], shown[0])


def test_3d_stack_commits_only_the_viewed_slice(make_napari_viewer, qtbot, trained_model):
    volume = synthetic_volume((6, 128, 128), seed=2, z_spacing=2.0)
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(volume.image, scale=(2.0, 1.0, 1.0))
    viewer.dims.set_point(0, 4 * 2.0)  # slice 4 in world units
    widget = open_widget(viewer)
    widget.set_model(trained_model, "trained", device="cpu", precision="fp32")
    wait_for_embedding(qtbot, widget)
    controller = widget.controller
    assert controller.current_plane().index_map == {0: 4}
    plane_labels = volume.labels[4]
    target = roundest_objects(plane_labels, 1)[0]
    click(qtbot, viewer, world_of(image, (4, *object_center(plane_labels, target)))[1:])
    np.testing.assert_array_equal(controller.points_layer.data[:, 0], [4])
    press(qtbot, viewer, Qt.Key.Key_C)
    data = controller.labels_layer.data
    assert data.shape == volume.image.shape
    assert data[4].max() == 1 and data[[0, 1, 2, 3, 5]].max() == 0
    assert iou(data[4] == 1, plane_labels == target) > 0.5


def test_scaled_layer_maps_clicks(make_napari_viewer, qtbot, trained_model, nuclei):
    viewer, widget, image = start(
        make_napari_viewer, qtbot, trained_model, nuclei.image, scale=(0.5, 2.0), translate=(3.0, -7.0)
    )
    target = roundest_objects(nuclei.labels, 1)[0]
    center = object_center(nuclei.labels, target)
    click(qtbot, viewer, world_of(image, center))
    point = widget.controller.points_layer.data[0]
    # one canvas pixel is 1/zoom world units; in data units that is at most 1/(zoom * scale)
    tolerance = 1.0 / (viewer.scene.camera.zoom * np.asarray(image.scale))
    assert (np.abs(point - center) <= tolerance + 0.5).all()
    widget.commit_button.clicked.emit()
    assert iou(widget.controller.labels_layer.data == 1, nuclei.labels == target) > 0.5
    np.testing.assert_array_equal(widget.controller.labels_layer.scale, image.scale)


# ------------------------------------------------------- workers, errors
class SlowPredictor(Predictor):
    """The engine predictor with a slow encoder, recording the thread it runs in."""

    delay = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = []

    def compute_embedding(self, image, intensity_range=None):
        self.threads.append(threading.get_ident())
        time.sleep(self.delay)
        return super().compute_embedding(image, intensity_range)


def test_embedding_runs_in_a_worker_and_the_gui_stays_responsive(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32))
    widget = open_widget(viewer)
    predictor = SlowPredictor(tiny_model, device="cpu", precision="fp32")
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    widget.set_predictor(predictor, "slow")
    assert widget.is_embedding()
    wait_for_embedding(qtbot, widget)
    timer.stop()
    assert predictor.threads and threading.get_ident() not in predictor.threads
    assert len(ticks) >= 20  # the event loop kept running during the 1 s embedding
    assert max(np.diff(ticks)) < 0.5


def test_embed_all_slices_then_cancel(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((5, 48, 48)).astype(np.float32))
    widget = open_widget(viewer)
    widget.auto_embed.value = False
    predictor = SlowPredictor(tiny_model, device="cpu", precision="fp32")
    predictor.delay = 0.3
    widget.set_predictor(predictor, "slow")
    widget.embed_all_button.clicked.emit()
    qtbot.waitUntil(lambda: len(predictor.threads) >= 1, timeout=EMBED_TIMEOUT_MS)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)
    assert len(predictor.threads) < 5 and len(widget.controller.missing_planes()) > 0
    widget.embed_all_button.clicked.emit()
    qtbot.waitUntil(
        lambda: not widget.is_embedding() and not widget.controller.missing_planes(), timeout=EMBED_TIMEOUT_MS
    )
    assert len(widget.controller.cache()) == 5


def test_an_error_in_the_embedding_worker_is_a_notification(make_napari_viewer, qtbot, tiny_model, notifications):
    viewer = make_napari_viewer()
    image = np.ones((40, 40), np.float32)
    image[3, 3] = np.nan
    viewer.add_image(image)
    widget = open_widget(viewer)
    widget.set_model(tiny_model, "tiny", device="cpu")
    qtbot.waitUntil(lambda: any("NaN" in str(n.message) for n in notifications), timeout=EMBED_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)
    assert "NaN" in widget.status.text()
    assert not widget.controller.has_embedding()


def test_a_bad_checkpoint_file_is_a_message(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"this is not a checkpoint")
    widget.model_choice.value = LOCAL_FILE
    assert not widget.model_file.native.isHidden()  # the file chooser appears
    widget.model_file.value = bad
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.model_picker.is_loading(), timeout=30_000)
    assert "weights.pth" in widget.model_status.text() and "Traceback" not in widget.model_status.text()
    assert widget.load_button.text == "Load model"
    assert widget.controller.predictor is None
    assert any("weights.pth" in str(n.message) for n in notifications)


def test_the_load_button_cancels_a_load_in_progress(make_napari_viewer, qtbot, monkeypatch, tmp_path, tiny_model):
    import napari_sam.model
    from napari_sam.model.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    real, started = napari_sam.model.load_model, []

    def slow(*args, **kwargs):
        started.append(args)
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(napari_sam.model, "load_model", slow)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32))
    widget = open_widget(viewer)
    widget.model_picker.choose(str(checkpoint))
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: len(started) == 1, timeout=EMBED_TIMEOUT_MS)
    assert widget.load_button.text == "Cancel loading"
    widget.load_button.clicked.emit()
    assert widget.load_button.text == "Load model" and "cancelled" in widget.model_status.text()
    qtbot.wait(800)  # the abandoned load ends in its thread; its model is not used
    assert widget.controller.predictor is None
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.controller.predictor is not None, timeout=EMBED_TIMEOUT_MS)
    wait_for_embedding(qtbot, widget)
    assert len(started) == 2


def test_a_missing_zoo_checkpoint_says_how_to_place_it(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    from napari_sam.model import zoo
    from napari_sam.model.errors import DownloadError

    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(tmp_path))

    def unreachable(name, progress=True):  # what fetch_checkpoint raises without internet access
        raise DownloadError(f"Could not download model {name!r}: no route to host\n{zoo.manual_install_hint(name)}")

    monkeypatch.setattr(zoo, "fetch_checkpoint", unreachable)
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.model_choice.value = "vit_t"
    assert "downloaded on first use" in widget.model_info.text()
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: "copy it to" in widget.model_status.text(), timeout=30_000)
    assert str(tmp_path / "mobile_sam.pt") in widget.model_status.text()


def test_save_and_load_embeddings_from_the_widget(make_napari_viewer, qtbot, tiny_model, tmp_path):
    data = np.random.default_rng(1).random((2, 48, 48)).astype(np.float32)
    viewer, widget, _ = start(make_napari_viewer, qtbot, tiny_model, data)
    widget.save_embeddings(tmp_path / "emb.zarr")
    assert (tmp_path / "emb.zarr").is_dir()

    viewer2 = make_napari_viewer()
    viewer2.add_image(data)
    widget2 = open_widget(viewer2)
    widget2.auto_embed.value = False
    widget2.set_model(tiny_model, "test model", device="cpu", precision="fp32")
    widget2.load_embeddings(tmp_path / "emb.zarr")
    assert widget2.controller.has_embedding()  # the slice shown was saved: nothing to compute
    assert "1 embeddings" in widget2.embed_status.text()


def test_labels_choice_offers_matching_layers_only(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((30, 40), np.float32))
    matching = viewer.add_labels(np.zeros((30, 40), np.int32), name="mine")
    viewer.add_labels(np.zeros((10, 10), np.int32), name="other shape")
    widget = open_widget(viewer)
    names = [widget.labels_choice.native.itemText(i) for i in range(widget.labels_choice.native.count())]
    assert "mine" in names and "other shape" not in names and "SAM preview" not in names
    widget.labels_choice.value = matching
    assert widget.controller.labels_layer.unique_id == matching.unique_id


def test_demo_opens_a_sample_with_the_widget_docked(make_napari_viewer, tmp_path):
    from napari_sam._napari.demo import open_annotator

    viewer = make_napari_viewer()
    widget = open_annotator(viewer, sample="cell", model="vit_b", load=False)
    assert [layer.name for layer in viewer.layers][0] == "cell"
    # plugins get napari's public-only proxies of the viewer's objects: compare ids
    assert widget.controller.image_layer.unique_id == viewer.layers["cell"].unique_id
    assert widget.controller.points_layer.unique_id == viewer.layers.selection.active.unique_id
    assert widget.model_choice.value == "vit_b"
    checkpoint = tmp_path / "my_sam.pth"
    checkpoint.touch()
    other = open_annotator(make_napari_viewer(), sample=None, model=str(checkpoint), load=False)
    assert other.model_choice.value == LOCAL_FILE and other.model_file.value == checkpoint


def test_widget_is_in_the_layers_segment_menu(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    items = get_app_model().menus.get_menu("napari/layers/segment")
    assert "napari-sam.annotator" in [getattr(item, "command", None) and item.command.id for item in items]


def test_cli_annotate_opens_napari_with_the_sample_and_widget(make_napari_viewer, monkeypatch):
    """The README's main job: `napari-sam annotate --sample cell` docks the annotator on the sample."""
    import napari

    from napari_sam.cli import main

    viewers = []
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: viewers.append(make_napari_viewer()) or viewers[-1])
    monkeypatch.setattr(napari, "run", lambda: None)
    assert main(["annotate", "--sample", "cell", "--model", "vit_t", "--no-load"]) == 0
    (viewer,) = viewers
    assert "cell" in viewer.layers
    assert WIDGET in [name.split(" (")[0] for name in viewer.window.dock_widgets]


def test_docked_with_segment_everything_on_a_laptop_screen_the_annotator_keeps_its_share(
    make_napari_viewer, qtbot, tmp_path, tiny_model
):
    """Opened one after the other at 1366 x 768 (as a user does), neither dock is squeezed to a few rows."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1366, 768)
    viewer.add_image(np.zeros((256, 256), np.float32), name="image")
    _, annotator = viewer.window.add_plugin_dock_widget("napari-sam", "Segment Anything annotator")
    from napari_sam.model.checkpoint import save_checkpoint

    annotator.model_picker.choose(str(save_checkpoint(tiny_model, tmp_path / "tiny.pt")))
    qtbot.wait(100)
    _, everything = viewer.window.add_plugin_dock_widget("napari-sam", "Segment everything")
    qtbot.waitUntil(everything.isVisible)
    qtbot.wait(300)
    assert annotator.height() >= 300 and everything.height() >= 250, (annotator.height(), everything.height())
