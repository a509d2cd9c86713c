"""What the annotator says and how it looks: errors from workers, status that follows the work, a dock that stays narrow.

Run with a display, e.g.
    xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/qt/test_annotator_status.py
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._napari.model_picker import LOCAL_FILE
from napari_sam.engine import Predictor

from test_annotator_widget import EMBED_TIMEOUT_MS, open_widget, wait_for_embedding  # isort: skip

pytestmark = pytest.mark.gui
DOCK_WIDTH = 420  # px: the widest the annotator's content may ask for


class FailingPredictor(Predictor):
    """A predictor whose encoder fails as torch does when memory runs out (a RuntimeError)."""

    def compute_embedding(self, image, intensity_range=None):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_runtime_error_in_the_embedding_worker_is_a_notification(
    make_napari_viewer, qtbot, tiny_model, notifications
):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((48, 48)).astype(np.float32))
    widget = open_widget(viewer)
    widget.set_predictor(
        FailingPredictor(tiny_model, device="cpu", precision="fp32"), "failing"
    )
    qtbot.waitUntil(
        lambda: any("out of memory" in str(n.message) for n in notifications),
        timeout=EMBED_TIMEOUT_MS,
    )
    qtbot.waitUntil(lambda: not widget.is_embedding(), timeout=EMBED_TIMEOUT_MS)
    assert not widget.cancel_button.enabled
    assert widget.embed_status.text() == "Embedding failed."
    assert "out of memory" in widget.status.text()
    # still usable: a working model embeds the same slice
    widget.set_model(tiny_model, "tiny", device="cpu", precision="fp32")
    wait_for_embedding(qtbot, widget)


def test_the_status_moves_on_once_the_embedding_arrives(
    make_napari_viewer, qtbot, tiny_model
):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((48, 48)).astype(np.float32))
    widget = open_widget(viewer)
    widget.set_model(tiny_model, "tiny", device="cpu", precision="fp32")
    assert "Computing the image embedding" in widget.status.text()
    wait_for_embedding(qtbot, widget)
    qtbot.waitUntil(lambda: "Computing" not in widget.status.text(), timeout=5000)
    assert "click an object" in widget.status.text()
    assert "Computing" not in widget.preview_status.text()


def test_the_2d_hint_goes_when_the_viewer_is_back_in_2d(
    make_napari_viewer, qtbot, tiny_model
):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((3, 48, 48)).astype(np.float32))
    widget = open_widget(viewer)
    widget.set_model(tiny_model, "tiny", device="cpu", precision="fp32")
    wait_for_embedding(qtbot, widget)
    viewer.dims.ndisplay = 3
    assert "switch the viewer to 2D" in widget.status.text()
    viewer.dims.ndisplay = 2
    assert (
        "2D" not in widget.status.text() and "click an object" in widget.status.text()
    )


def test_planes_are_named_as_napari_slider_shows_them(
    make_napari_viewer, qtbot, tiny_model
):
    viewer = make_napari_viewer()
    viewer.add_image(
        np.zeros((20, 48, 48), np.float32), name="reference"
    )  # the slider counts 0..19
    stack = viewer.add_image(
        np.random.default_rng(0).random((5, 48, 48)).astype(np.float32),
        scale=(2, 1, 1),
        translate=(10, 0, 0),
    )
    viewer.dims.axis_labels = ("z", "y", "x")
    widget = open_widget(viewer)
    widget.image_choice.value = stack
    viewer.dims.set_current_step(
        0, 14
    )  # the stack's data plane 2 (world z = 10 + 2 * 2)
    assert widget.controller.current_plane().index_map == {0: 2}
    widget.auto_embed.value = False
    widget.set_model(tiny_model, "tiny", device="cpu", precision="fp32")
    widget.embed_button.clicked.emit()
    wait_for_embedding(qtbot, widget)
    # the axis label and the slider position (the text is set once the worker has finished)
    qtbot.waitUntil(lambda: "slice z=14" in widget.embed_status.text(), timeout=5000)
    assert "axis 0" not in widget.embed_status.text()
    assert viewer.dims.current_step[0] == 14  # what the slider shows


def test_a_long_error_does_not_widen_the_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    widget = open_widget(viewer)
    path = (
        "/data/"
        + "/".join(f"experiment_{i:02d}_long_folder_name" for i in range(10))
        + "/image.tif"
    )
    message = (
        f"Could not read the checkpoint '{path}': "
        + "the file is not a SAM checkpoint " * 5
    )
    assert len(message) > 400
    widget._report(message, error=True)
    widget.embed_status.setText(message)
    widget.preview_status.setText(message)
    widget.model_picker.status.setText(message)  # as a failed load shows it
    scroll_content = widget.layout().itemAt(0).widget().widget()
    assert scroll_content.minimumSizeHint().width() <= DOCK_WIDTH
    assert widget.minimumSizeHint().width() <= DOCK_WIDTH


def test_every_control_has_a_tooltip(make_napari_viewer):
    widget = open_widget(make_napari_viewer())
    controls = {
        name: getattr(widget, name)
        for name in (
            "image_choice",
            "model_choice",
            "model_file",
            "device_choice",
            "load_button",
            "auto_embed",
            "embed_button",
            "embed_all_button",
            "cancel_button",
            "save_button",
            "load_embeddings_button",
            "labels_choice",
            "paint_over",
            "commit_button",
            "clear_button",
            "next_button",
        )
    }
    missing = [
        name for name, control in controls.items() if not control.native.toolTip()
    ]
    assert missing == []


def test_the_checkpoint_field_shows_only_for_a_local_file(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    widget = open_widget(viewer)
    viewer.show()  # the window shown after docking, as `napari-sam annotate` does
    qtbot.wait(50)
    field = widget.model_file.native
    assert widget.model_choice.value != LOCAL_FILE
    assert not field.isVisible()
    widget.model_choice.value = LOCAL_FILE
    assert field.isVisible()
    widget.model_choice.value = "vit_t"
    assert not field.isVisible()
