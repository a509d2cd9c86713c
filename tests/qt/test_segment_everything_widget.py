"""The "Segment everything" widget: what a user does, from image to a new Labels layer.

GUI tests: run under Xvfb (``xvfb-run -a python -m pytest``).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.datasets.synthetic import synthetic_image

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, tiny_model):
    from napari_sam._napari.segment_everything_widget import SegmentEverythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(synthetic_image((300, 420), seed=4).image, name="nuclei", scale=(2.0, 2.0), translate=(10, 0))
    w = SegmentEverythingWidget(viewer)
    w.model = tiny_model
    # a random-weight model proposes few confident masks: accept them all so the result is not empty
    w.pred_iou_thresh.value = 0.0
    w.stability_thresh.value = 0.0
    w.points_per_side.value = 4
    return w


def test_region_of_interest_from_a_rectangle_gives_an_aligned_labels_layer(widget):
    viewer = widget.viewer
    # rectangle in world coordinates: image rows 50..149, cols 100..299 (scale 2, translate 10 in y)
    shapes = viewer.add_shapes([[[110, 200], [110, 598], [308, 598], [308, 200]]], shape_type="rectangle", name="roi")
    widget.roi_choice.value = shapes
    widget.image_choice.value = viewer.layers["nuclei"]
    layer = widget.run(synchronous=True)
    assert layer is not None and layer in viewer.layers
    assert layer.data.shape == (100, 200)
    np.testing.assert_allclose(layer.scale, (2.0, 2.0))
    np.testing.assert_allclose(layer.translate, (10 + 50 * 2, 100 * 2))
    assert layer.data.max() >= 1


def test_run_in_a_worker_reports_progress_and_adds_labels(widget, qtbot):
    viewer = widget.viewer
    widget.tile_size.value = 256
    widget.halo.value = 32
    steps = []
    widget.run()
    assert widget.worker is not None and not widget.run_button.enabled
    widget.worker.yielded.connect(steps.append)
    with qtbot.waitSignal(widget.worker.finished, timeout=60_000):
        pass
    labels = [layer for layer in viewer.layers if layer.name == "nuclei everything"]
    assert len(labels) == 1 and labels[0].data.shape == (300, 420)
    assert steps and steps[-1][0] == steps[-1][1] == 6  # 2 x 3 tiles
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancel_stops_between_tiles_without_a_result(widget, qtbot):
    viewer = widget.viewer
    widget.tile_size.value = 256
    widget.halo.value = 32
    widget.run()
    worker = widget.worker
    worker.yielded.connect(lambda _step: widget.cancel())
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert not [layer for layer in viewer.layers if layer.name == "nuclei everything"]
    assert widget.status.value == "cancelled"


def test_bad_parameters_are_reported_not_raised(widget, monkeypatch):
    import napari_sam._napari.segment_everything_widget as module

    errors = []
    monkeypatch.setattr(module, "show_error", errors.append)
    shapes = widget.viewer.add_shapes(name="empty roi")
    widget.roi_choice.value = shapes
    assert widget.run(synchronous=True) is None
    assert errors and "no rectangle" in errors[0]
