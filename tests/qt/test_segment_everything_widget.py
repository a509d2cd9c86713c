"""The "Segment everything" widget: what a user does, from image to a new Labels layer.

The widget is docked through the plugin's manifest, the model is chosen as a user
chooses it (a checkpoint file), Run is clicked, and the test waits until Run is
enabled again. GUI tests: run under Xvfb (``xvfb-run -a python -m pytest``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Labels

from napari_sam._napari.model_picker import LOCAL_FILE
from napari_sam.engine.datasets.synthetic import synthetic_image

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 60_000
PLUGIN, WIDGET = "napari-sam", "Segment everything"


# ----------------------------------------------------------------- helpers
def open_widget(viewer):
    """Dock the widget through the manifest, as Plugins / Layers > Segment do."""
    from napari_sam._napari.segment_everything_widget import SegmentEverythingWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, SegmentEverythingWidget)
    return widget


def choose_checkpoint(widget, path) -> None:
    from napari_sam._napari.model_picker import LOCAL_FILE

    widget.model_choice.value = LOCAL_FILE
    widget.model_file.value = path


def accept_all_masks(widget, points_per_side: int = 4) -> None:
    # a random-weight model proposes few confident masks: accept them all so the result is not empty
    widget.pred_iou_thresh.value = 0.0
    widget.stability_thresh.value = 0.0
    widget.points_per_side.value = points_per_side


def click_run_and_wait(qtbot, widget) -> None:
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)


@pytest.fixture
def status_texts(qtbot):
    """Watch a widget's status line as a user does: every text it shows, in order (polled every millisecond)."""
    from qtpy.QtCore import QTimer

    timers = []

    def watch(widget, on_text=None) -> list[str]:
        seen: list[str] = []

        def poll():
            text = widget.status.value
            if not seen or seen[-1] != text:
                seen.append(text)
                if on_text is not None:
                    on_text(text)

        timer = QTimer()
        timer.timeout.connect(poll)
        timer.start(1)
        timers.append(timer)
        return seen

    yield watch
    for timer in timers:
        timer.stop()


def labels_layers(viewer) -> list:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model) -> Path:
    """The random-weight tiny SAM saved as a local checkpoint file (fast to load)."""
    from napari_sam.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path / "tiny.pt")


@pytest.fixture
def widget(make_napari_viewer, tiny_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_image((300, 420), seed=4).image, name="nuclei", scale=(2.0, 2.0), translate=(10, 0))
    w = open_widget(viewer)
    choose_checkpoint(w, tiny_checkpoint)
    accept_all_masks(w)
    return w


@pytest.fixture
def load_calls(monkeypatch):
    """Every call of ``napari_sam.model.load_model`` (the function the widgets load checkpoints with)."""
    import napari_sam.model

    calls = []
    real = napari_sam.model.load_model

    def counting(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(napari_sam.model, "load_model", counting)
    return calls


# ----------------------------------------------------------------- planes
@pytest.mark.parametrize("order", [(1, 0, 2), (1, 2, 0)], ids=["axes 0,2 shown", "axes 2,0 shown (transposed)"])
def test_transposed_dims_segment_the_plane_on_screen(trained_model_path, make_napari_viewer, qtbot, order):
    """With dims.order putting axis 1 on the slider, the plane (:, k, :) is segmented and labelled."""
    nuclei = synthetic_image((160, 224), seed=7, style="mixed")
    depth, shown = 12, 3
    background = np.median(nuclei.image)
    stack = np.full((160, depth, 224), background, dtype=nuclei.image.dtype)
    stack[:, shown, :] = nuclei.image  # objects only in the plane shown after the transposition
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="stack", scale=(1.0, 2.0, 1.0))
    viewer.dims.order = order
    viewer.dims.set_point(1, shown * 2.0)
    widget = open_widget(viewer)
    choose_checkpoint(widget, trained_model_path)
    widget.points_per_side.value = 16
    widget.pred_iou_thresh.value = 0.5  # the test model's IoU head stays below SAM's 0.88

    click_run_and_wait(qtbot, widget)

    (layer,) = labels_layers(viewer)
    assert layer.data.shape == (160, 1, 224)  # rows on axis 0, columns on axis 2: the plane's orientation
    plane_labels = np.asarray(layer.data[:, 0, :])
    assert plane_labels.max() >= 5
    assert iou(plane_labels > 0, nuclei.labels > 0) > 0.5
    # the layer covers the shown plane of the image, and no other plane
    for row, col in [(0, 0), (100, 37)]:
        np.testing.assert_allclose(layer.data_to_world((row, 0, col)), image.data_to_world((row, shown, col)))
    covered = [k for k in range(depth) if round(layer.world_to_data(image.data_to_world((0, k, 0)))[1]) == 0]
    assert covered == [shown]


def test_region_of_interest_from_a_rectangle_gives_an_aligned_labels_layer(widget, qtbot):
    viewer = widget.viewer
    # rectangle in world coordinates: image rows 50..149, cols 100..299 (scale 2, translate 10 in y)
    shapes = viewer.add_shapes([[[110, 200], [110, 598], [308, 598], [308, 200]]], shape_type="rectangle", name="roi")
    widget.roi_choice.value = shapes
    widget.image_choice.value = viewer.layers["nuclei"]
    click_run_and_wait(qtbot, widget)
    (layer,) = labels_layers(viewer)
    assert layer.name == "nuclei everything"
    assert layer.data.shape == (100, 200)
    np.testing.assert_allclose(layer.scale, (2.0, 2.0))
    np.testing.assert_allclose(layer.translate, (10 + 50 * 2, 100 * 2))
    assert layer.data.max() >= 1


def test_a_rectangle_drawn_on_a_transposed_view_is_cut_from_the_plane_shown():
    from napari.components import ViewerModel

    from napari_sam._napari.planes import current_plane
    from napari_sam._napari.segment_everything_widget import roi_box

    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((40, 6, 50)), scale=(1.0, 2.0, 0.5))
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 3 * 2.0)
    plane = current_plane(viewer, image)
    # drawn on the view: rows 5..14 of axis 0, world columns 5..14.5 = data columns 10..29 of axis 2
    shapes = viewer.add_shapes([[[5, 6, 5], [5, 6, 14.5], [14, 6, 14.5], [14, 6, 5]]], shape_type="rectangle")
    assert roi_box(viewer, shapes, image, plane) == (5, 15, 10, 30)


# ------------------------------------------------------ workers, progress
def test_run_in_a_worker_reports_progress_and_adds_labels(widget, qtbot, status_texts):
    viewer = widget.viewer
    widget.tile_size.value = 256
    widget.halo.value = 32
    texts = status_texts(widget)
    widget.run_button.native.click()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    qtbot.wait(20)
    (layer,) = labels_layers(viewer)
    assert layer.data.shape == (300, 420)
    tiles = [text for text in texts if text.startswith("tile ")]
    assert tiles and all(text.endswith(" / 6") for text in tiles)  # 2 x 3 tiles
    assert texts[-1].endswith("s).") and " objects (" in texts[-1]
    assert not widget.cancel_button.enabled


def test_cancel_stops_between_tiles_without_a_result(widget, qtbot, status_texts):
    viewer = widget.viewer
    widget.tile_size.value = 256
    widget.halo.value = 32
    status_texts(widget, on_text=lambda text: text.startswith("tile 1 ") and widget.cancel_button.native.click())
    click_run_and_wait(qtbot, widget)
    assert not labels_layers(viewer)
    assert widget.status.value == "Cancelled after 1 of 6 tiles."


def test_cancel_while_the_model_loads_drops_it(widget, qtbot, monkeypatch, load_calls):
    import napari_sam.model

    counting, started = napari_sam.model.load_model, []

    def slow(*args, **kwargs):
        started.append(args)
        time.sleep(0.5)
        return counting(*args, **kwargs)

    monkeypatch.setattr(napari_sam.model, "load_model", slow)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: len(started) == 1, timeout=RUN_TIMEOUT_MS)
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    widget.cancel_button.native.click()
    assert widget.run_button.enabled and widget.status.value == "Cancelled while loading the model."
    qtbot.waitUntil(lambda: len(load_calls) == 1, timeout=RUN_TIMEOUT_MS)  # the load ends in its thread...
    qtbot.wait(200)
    assert widget.model_picker.loaded is None and not labels_layers(widget.viewer)  # ...and is dropped
    click_run_and_wait(qtbot, widget)
    assert len(labels_layers(widget.viewer)) == 1
    assert len(load_calls) == 2


# --------------------------------------------------------- loading once
def test_running_twice_loads_the_model_once(widget, qtbot, load_calls):
    click_run_and_wait(qtbot, widget)
    click_run_and_wait(qtbot, widget)
    assert len(labels_layers(widget.viewer)) == 2
    assert len(load_calls) == 1
    widget.device_choice.value = "cpu"  # another device: load again
    click_run_and_wait(qtbot, widget)
    assert len(load_calls) == 2


def test_a_replaced_checkpoint_file_is_loaded_again(widget, qtbot, load_calls, tiny_checkpoint, tiny_model):
    import os

    from napari_sam.model.checkpoint import save_checkpoint

    click_run_and_wait(qtbot, widget)
    stat = tiny_checkpoint.stat()
    save_checkpoint(tiny_model, tiny_checkpoint)
    os.utime(tiny_checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    click_run_and_wait(qtbot, widget)
    assert len(load_calls) == 2


def test_the_annotator_of_the_same_viewer_reuses_the_loaded_model(widget, qtbot, load_calls, tiny_checkpoint):
    from napari_sam._napari.annotator_widget import AnnotatorWidget

    click_run_and_wait(qtbot, widget)
    _, annotator = widget.viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything annotator")
    assert isinstance(annotator, AnnotatorWidget)
    choose_checkpoint(annotator, tiny_checkpoint)
    annotator.load_button.native.click()
    qtbot.waitUntil(lambda: annotator.controller.predictor is not None, timeout=RUN_TIMEOUT_MS)
    assert len(load_calls) == 1
    assert annotator.controller.predictor.model is widget.model_picker.loaded.model


def test_opened_after_the_annotator_loaded_a_checkpoint_it_starts_on_that_checkpoint(
    make_napari_viewer, qtbot, tiny_checkpoint, load_calls
):
    """A user who loaded a file in the annotator expects Segment everything to use it, not to download vit_t."""
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_image((96, 128), seed=3).image, name="nuclei")
    _, annotator = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything annotator")
    choose_checkpoint(annotator, tiny_checkpoint)
    annotator.load_button.native.click()
    qtbot.waitUntil(lambda: annotator.controller.predictor is not None, timeout=RUN_TIMEOUT_MS)
    widget = open_widget(viewer)
    assert widget.model_choice.value == LOCAL_FILE
    assert Path(widget.model_file.value).resolve() == Path(tiny_checkpoint).resolve()
    accept_all_masks(widget)
    click_run_and_wait(qtbot, widget)
    assert len(load_calls) == 1  # the annotator's model, not a second load


def test_each_viewer_loads_its_own_model(make_napari_viewer, qtbot, tiny_checkpoint, load_calls):
    opened = []
    for seed in (1, 2):
        viewer = make_napari_viewer()
        viewer.add_image(synthetic_image((96, 128), seed=seed).image, name="nuclei")
        opened.append(open_widget(viewer))
        choose_checkpoint(opened[-1], tiny_checkpoint)
        accept_all_masks(opened[-1])
        click_run_and_wait(qtbot, opened[-1])
    assert len(load_calls) == 2
    assert opened[0].model_picker.loaded.model is not opened[1].model_picker.loaded.model


def test_a_bad_checkpoint_file_is_a_notification(widget, qtbot, tmp_path, notifications):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"this is not a checkpoint")
    choose_checkpoint(widget, bad)
    click_run_and_wait(qtbot, widget)
    assert any("weights.pth" in str(n.message) for n in notifications)
    assert "Traceback" not in widget.model_picker.status.text()
    assert not labels_layers(widget.viewer)


def test_a_device_this_machine_lacks_is_a_notification(widget, qtbot, notifications):
    import torch

    mps = getattr(torch.backends, "mps", None)
    missing = "cuda" if not torch.cuda.is_available() else "mps"
    assert missing == "cuda" or not (mps and mps.is_available()), "this machine has every device"
    widget.device_choice.value = missing
    click_run_and_wait(qtbot, widget)
    assert any(missing in str(n.message).lower() for n in notifications)
    assert not labels_layers(widget.viewer) and widget.model_picker.loaded is None


def test_bad_parameters_are_reported_not_raised(widget, qtbot, notifications, load_calls):
    shapes = widget.viewer.add_shapes(name="empty roi")
    widget.roi_choice.value = shapes
    click_run_and_wait(qtbot, widget)
    assert any("no rectangle" in str(n.message) for n in notifications)
    assert not labels_layers(widget.viewer) and not load_calls  # nothing loaded for a run that cannot start


# ------------------------------------------------------------- defaults
def test_defaults_and_tooltips_come_from_automatic_params(make_napari_viewer):
    import dataclasses

    from napari_sam.engine.automatic.params import AutomaticParams

    widget = open_widget(make_napari_viewer())
    defaults = AutomaticParams()
    for name in ("points_per_side", "pred_iou_thresh", "stability_thresh", "min_area"):
        assert getattr(widget, name).value == getattr(defaults, name), name
    assert widget.nested_thresh.value == 0.0 and defaults.nested_thresh is None  # 0 stands for None (off)
    assert "point grid" in widget.points_per_side.tooltip
    assert "stability score" in widget.stability_thresh.tooltip
    assert {f.name for f in dataclasses.fields(AutomaticParams)} >= {"points_per_side", "min_area"}


# ---------------------------------------------------------------- closing
def test_closing_the_widget_disconnects_it_from_the_viewer(widget):
    viewer = widget.viewer
    widget.close()
    viewer.add_image(np.zeros((20, 20)), name="added after closing")
    assert "added after closing" not in [layer.name for layer in widget.image_choice.choices]


def test_removing_the_dock_disconnects_it_from_the_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    widget = open_widget(viewer)
    qtbot.waitUntil(widget.isVisible)
    viewer.add_image(np.zeros((20, 20)), name="before")
    assert "before" in [layer.name for layer in widget.image_choice.choices]
    viewer.window.remove_dock_widget(widget)  # what the dock's close button does
    viewer.add_image(np.zeros((20, 20)), name="after")
    assert "after" not in [layer.name for layer in widget.image_choice.choices]


# ------------------------------------------------ errors in workers (issue 16)
def assert_usable(widget) -> None:
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert not widget.is_busy()


def test_a_failed_model_download_is_a_notification_and_the_widget_stays_usable(widget, qtbot, monkeypatch, notifications):
    import napari_sam.model
    from napari_sam.model.errors import DownloadError

    def failing(*args, **kwargs):
        raise DownloadError("Could not download vit_t: network unreachable. Download it by hand and choose the file.")

    monkeypatch.setattr(napari_sam.model, "load_model", failing)
    click_run_and_wait(qtbot, widget)
    qtbot.waitUntil(lambda: any("network unreachable" in str(n.message) for n in notifications), timeout=5000)
    assert_usable(widget)
    assert not labels_layers(widget.viewer)


def test_a_runtime_error_while_segmenting_is_a_notification_and_the_widget_stays_usable(
    widget, qtbot, monkeypatch, notifications
):
    import napari_sam.engine.automatic.segment as segment

    def failing_steps(*args, **kwargs):
        yield 1, 4
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(segment, "segment_everything_steps", failing_steps)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: any("out of memory" in str(n.message) for n in notifications), timeout=RUN_TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5000)
    assert_usable(widget)
    assert "out of memory" in widget.status.value
    monkeypatch.undo()  # the widget runs again once the cause is gone
    click_run_and_wait(qtbot, widget)
    assert len(labels_layers(widget.viewer)) == 1


def test_after_cancel_the_status_says_how_far_it_got(widget, qtbot, status_texts):
    widget.tile_size.value = 256
    widget.halo.value = 32
    status_texts(widget, on_text=lambda text: text.startswith("tile 2 ") and widget.cancel_button.native.click())
    click_run_and_wait(qtbot, widget)
    qtbot.wait(300)  # tiles queued before Cancel must not bring back "tile n / 6"
    assert widget.status.value == "Cancelled after 2 of 6 tiles."
    assert not labels_layers(widget.viewer)


# ------------------------------------- report, preview, all planes (issue 16)
@pytest.fixture
def trained_widget(trained_model_path, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_image((512, 512), seed=41).image, name="nuclei")
    w = open_widget(viewer)
    choose_checkpoint(w, trained_model_path)
    # these tests are about the AMG report and preview, and the fixture has a decoder: the user picks automatic
    # masks (a pick is a change of the choice; before the file is loaded the widget shows "amg" already)
    w.method.value = "instance"
    w.method.value = "amg"
    w.points_per_side.value = 8
    return w


def test_after_run_the_widget_says_what_each_threshold_rejected_and_offers_a_better_one(trained_widget, qtbot):
    widget = trained_widget
    widget.preview_button.native.click()  # SAM's defaults on a model whose scores stay below 0.88
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert widget.status.value.startswith("Preview: 0 objects")
    text = widget.report.text()
    assert "masks decoded" in text and "below predicted IoU 0.88" in text and "Try predicted IoU 0." in text
    assert not widget.apply_button.native.isHidden()
    widget.apply_button.native.click()
    suggested = widget.pred_iou_thresh.value
    assert 0.3 < suggested < 0.88 and f"{suggested:.2f}" in text
    click_run_and_wait(qtbot, widget)
    (layer,) = [layer for layer in labels_layers(widget.viewer) if layer.name == "nuclei everything"]
    assert layer.data.max() >= 10  # the suggestion finds the nuclei
    assert widget.status.value.startswith(f"{layer.data.max()} objects")
    assert "kept" in widget.report.text()


def test_preview_segments_a_small_region_at_the_centre_of_the_view(trained_widget, qtbot, monkeypatch):
    """A preview segments one tile around the view's centre; Run segments all nine (counted, not timed)."""
    from napari_sam._napari import segment_everything_widget as module

    reports = []

    class CountedReport(module.FilterReport):  # every run's report, to count the tiles it segmented
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            reports.append(self)

    monkeypatch.setattr(module, "FilterReport", CountedReport)
    widget = trained_widget
    viewer = widget.viewer
    widget.pred_iou_thresh.value = 0.5
    (viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera).center = (0, 200, 300)  # look right of the image's centre
    widget.preview_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    (layer,) = labels_layers(viewer)
    assert layer.name == "nuclei preview"
    assert layer.data.shape == (256, 256)  # one tile of the test model (input 256), not the whole image
    np.testing.assert_allclose(layer.translate, (200 - 128, 300 - 128))  # centred on the view
    assert layer.data.max() >= 3
    assert reports[-1].tiles == 1
    widget.preview_button.native.click()  # a second preview replaces the first
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert [layer.name for layer in labels_layers(viewer)] == ["nuclei preview"]
    click_run_and_wait(qtbot, widget)
    assert reports[-1].tiles == 9  # the whole 512 x 512 image: 3 x 3 tiles


def test_all_planes_segments_every_plane_of_a_stack_with_unique_ids(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    stack = np.stack([synthetic_image((200, 220), seed=s).image for s in (1, 2, 3)])
    image = viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 2.0), translate=(5, 0, 7))
    viewer.dims.set_point(0, 3.0 * 1 + 5)  # the second plane on screen
    widget = open_widget(viewer)
    choose_checkpoint(widget, tiny_checkpoint)
    accept_all_masks(widget)
    assert widget.all_planes.enabled
    widget.all_planes.value = True
    click_run_and_wait(qtbot, widget)
    (layer,) = labels_layers(viewer)
    assert layer.data.shape == stack.shape
    ids = [set(np.unique(layer.data[z])) - {0} for z in range(3)]
    assert all(ids), "every plane has objects"
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    for point in [(0, 0, 0), (2, 199, 219)]:
        np.testing.assert_allclose(layer.data_to_world(point), image.data_to_world(point))
    viewer.add_image(np.zeros((20, 20)), name="flat")
    widget.image_choice.value = viewer.layers["flat"]
    assert not widget.all_planes.enabled and not widget.all_planes.value


def test_a_long_error_wraps_instead_of_widening_the_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    widget = open_widget(viewer)
    qtbot.waitUntil(widget.isVisible)
    width = widget.width()
    widget._report("The checkpoint could not be read: " + "a very long explanation " * 16)  # ~400 characters
    assert len(widget.status.value) > 400
    qtbot.wait(50)
    assert widget.minimumSizeHint().width() < 400
    assert widget.width() <= max(width, 400)


def test_the_rarely_changed_settings_are_folded_away(make_napari_viewer):
    widget = open_widget(make_napari_viewer())
    assert not widget.advanced.isExpanded()
    for shown in (widget.points_per_side, widget.pred_iou_thresh, widget.stability_thresh):
        assert not widget.advanced.isAncestorOf(shown.native)
    for folded in (widget.tile_size, widget.halo, widget.min_area, widget.nested_thresh):
        assert widget.advanced.isAncestorOf(folded.native)
    fields = [widget.image_choice, widget.tile_size, widget.halo, widget.points_per_side, widget.pred_iou_thresh,
              widget.stability_thresh, widget.min_area, widget.nested_thresh, widget.roi_choice, widget.all_planes,
              widget.preview_button, widget.run_button, widget.cancel_button]
    assert all(f.tooltip for f in fields), [f.label for f in fields if not f.tooltip]


def test_docked_under_the_annotator_on_a_laptop_screen_both_keep_their_share(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 720)
    viewer.add_image(np.zeros((64, 64), np.float32), name="image")  # an image fills the annotator's sections
    _, annotator = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything annotator")
    widget = open_widget(viewer)
    qtbot.waitUntil(widget.isVisible)
    qtbot.wait(100)
    assert annotator.height() >= 300  # not squeezed to three rows
    assert widget.height() >= 200
    for button in (widget.preview_button, widget.run_button, widget.cancel_button):  # never scrolled away
        corner = button.native.mapTo(widget, button.native.rect().bottomRight())
        assert widget.rect().contains(corner), button.text


# ------------------------------------------------------------ method
@pytest.fixture
def decoder_checkpoint(tmp_path) -> Path:
    """A random-weight tiny SAM with an instance decoder, saved as a local checkpoint file."""
    import dataclasses

    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.checkpoint import save_checkpoint
    from napari_sam.model.config import CONFIGS, InstanceDecoderConfig

    base = CONFIGS["tiny_vit_test"]
    config = dataclasses.replace(
        base, instance_decoder=InstanceDecoderConfig(embed_dim=base.prompt_embed_dim, initial_features=8)
    )
    torch.manual_seed(0)
    return save_checkpoint(build_sam(config).eval(), tmp_path / "decoder.pt")


# random decoder weights: its smoothed foreground map lies around 0.57; above 0.55 its maps make objects
LOOSE_INSTANCE = {"foreground_threshold": 0.55}


def shown(field) -> bool:
    return not field.native.isHidden()


def test_the_method_follows_the_model_until_picked_and_only_its_settings_show(trained_model_path, widget, qtbot, decoder_checkpoint):
    instance_fields = list(widget.instance_fields.values())
    amg_fields = [widget.points_per_side, widget.pred_iou_thresh, widget.stability_thresh]
    # the random tiny checkpoint has no decoder: automatic masks, their settings only
    assert widget.method.value == "amg"
    assert all(map(shown, amg_fields)) and not any(map(shown, instance_fields))
    # a checkpoint with a decoder: once loaded (by Run) the method becomes the decoder's
    choose_checkpoint(widget, decoder_checkpoint)
    for name, value in LOOSE_INSTANCE.items():
        widget.instance_fields[name].value = value
    widget.tile_size.value, widget.halo.value = 256, 32
    click_run_and_wait(qtbot, widget)
    assert widget.method.value == "instance"
    assert not any(map(shown, amg_fields)) and all(shown(widget.instance_fields[n]) for n in LOOSE_INSTANCE)
    (layer,) = labels_layers(widget.viewer)
    assert layer.data.max() >= 1 and widget.status.value.startswith(f"{layer.data.max()} objects")
    assert widget.report.text() == "" and widget.apply_button.native.isHidden()  # no AMG filter report
    # a method the user picks stays picked when the model changes
    widget.method.value = "amg"
    choose_checkpoint(widget, trained_model_path)
    choose_checkpoint(widget, decoder_checkpoint)
    assert widget.method.value == "amg" and all(map(shown, amg_fields))


def test_an_instance_run_writes_the_engines_instance_labels(make_napari_viewer, qtbot, decoder_checkpoint):
    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.automatic.segment import segment_everything
    from napari_sam.model import load_model

    image = synthetic_image((300, 420), seed=4).image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    widget = open_widget(viewer)
    choose_checkpoint(widget, decoder_checkpoint)
    widget.method.value = "instance"
    for name, value in LOOSE_INSTANCE.items():
        widget.instance_fields[name].value = value
    widget.instance_fields["min_size"].value = 20
    widget.tile_size.value, widget.halo.value = 256, 32
    click_run_and_wait(qtbot, widget)
    (layer,) = labels_layers(viewer)
    expected = segment_everything(
        image, load_model(decoder_checkpoint, device="cpu"), tile_shape=256, halo=32, method="instance",
        instance_params=InstanceParams(**LOOSE_INSTANCE, min_size=20),
    )
    assert expected.max() >= 2
    np.testing.assert_array_equal(layer.data, expected)


def test_a_decoder_file_beside_a_checkpoint_runs_instance_mode(
    make_napari_viewer, qtbot, tiny_checkpoint, decoder_checkpoint, tmp_path
):
    """micro-sam publishes a model and its decoder as two files: the Decoder field attaches the second."""
    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.automatic.segment import segment_everything
    from napari_sam.model import load_model

    image = synthetic_image((300, 420), seed=4).image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    widget = open_widget(viewer)
    decoder_field = widget.model_picker.decoder_file
    assert not shown(decoder_field)  # a zoo model: no file fields
    choose_checkpoint(widget, tiny_checkpoint)  # SAM without a decoder: automatic masks
    assert shown(decoder_field) and widget.method.value == "amg"
    decoder_field.value = tmp_path / "missing_decoder.pt"  # a mistake first: said, nothing run
    click_run_and_wait(qtbot, widget)
    assert "missing_decoder.pt" in widget.status.value and "not a file" in widget.status.value
    assert not labels_layers(viewer)
    decoder_field.value = decoder_checkpoint  # the decoder: instance mode, before anything is loaded
    assert widget.method.value == "instance"
    for name, value in LOOSE_INSTANCE.items():
        widget.instance_fields[name].value = value
    widget.tile_size.value, widget.halo.value = 256, 32
    click_run_and_wait(qtbot, widget)
    (layer,) = labels_layers(viewer)
    expected = segment_everything(
        image, load_model(tiny_checkpoint, device="cpu", decoder=decoder_checkpoint), tile_shape=256, halo=32,
        method="instance", instance_params=InstanceParams(**LOOSE_INSTANCE),
    )
    assert expected.max() >= 2
    np.testing.assert_array_equal(layer.data, expected)
    assert "tiny.pt + decoder.pt" in widget.model_picker.status.text()


def test_instance_mode_picked_for_a_model_without_decoder_is_a_notification(widget, qtbot, notifications):
    widget.method.value = "instance"
    click_run_and_wait(qtbot, widget)
    assert any("instance decoder, e.g. vit_b_lm" in str(n.message) for n in notifications)
    assert "vit_b_lm" in widget.status.value
    assert not labels_layers(widget.viewer) and widget.run_button.enabled


def test_instance_preview_segments_one_tile_around_the_view_centre(make_napari_viewer, qtbot, decoder_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_image((512, 512), seed=41).image, name="nuclei")
    widget = open_widget(viewer)
    choose_checkpoint(widget, decoder_checkpoint)
    for name, value in LOOSE_INSTANCE.items():
        widget.instance_fields[name].value = value
    widget.preview_button.native.click()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=RUN_TIMEOUT_MS)
    assert widget.method.value == "instance"  # the decoder model chose it
    (layer,) = labels_layers(viewer)
    assert layer.name == "nuclei preview" and layer.data.shape == (256, 256)
    assert layer.data.max() >= 1 and widget.status.value.startswith("Preview: ")


def test_a_zoo_model_with_a_decoder_shows_instance_mode_before_it_is_loaded(make_napari_viewer, load_calls):
    widget = open_widget(make_napari_viewer())
    assert widget.model_choice.value == "vit_t" and widget.method.value == "amg"
    widget.model_choice.value = "vit_b_lm"  # micro-sam's light-microscopy model, published with a decoder
    assert widget.method.value == "instance" and shown(widget.instance_fields["foreground_threshold"])
    assert not shown(widget.points_per_side)
    widget.model_choice.value = "vit_b"
    assert widget.method.value == "amg" and shown(widget.points_per_side)
    assert not load_calls  # nothing downloaded or loaded to know it


def test_instance_settings_take_their_defaults_and_tooltips_from_instance_params(make_napari_viewer):
    import dataclasses

    from napari_sam.engine.automatic.instance import InstanceParams

    widget = open_widget(make_napari_viewer())
    defaults = InstanceParams()
    assert set(widget.instance_fields) == {f.name for f in dataclasses.fields(InstanceParams)}
    for name, field in widget.instance_fields.items():
        assert field.value == getattr(defaults, name), name
        assert field.tooltip, name
    assert "foreground probability" in widget.instance_fields["foreground_threshold"].tooltip
