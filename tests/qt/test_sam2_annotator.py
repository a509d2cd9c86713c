"""The annotator with a SAM 2 checkpoint: chosen as a local file, loaded, clicked, committed, undone.

A tiny SAM 2 (``tiny_sam2_test``, deterministic random weights) saved the way Meta's code saves
checkpoints (``{"model": state_dict}``). Run under Xvfb like the other GUI tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

pytestmark = pytest.mark.gui

_here = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_annotator_gui", _here / "test_annotator_widget.py")
GUI = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = GUI
_spec.loader.exec_module(GUI)  # the annotator tests' helpers: open_widget, click, press, world_of
_spec = importlib.util.spec_from_file_location("_sam2_gui_weights", _here.parent / "_weights.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


@pytest.fixture
def sam2_checkpoint(tmp_path) -> Path:
    from napari_sam.model.config import TINY_SAM2
    from napari_sam.model.sam2 import build_sam2

    model = W.load_deterministic_weights(build_sam2(TINY_SAM2), seed=1)
    path = tmp_path / "tiny_sam2.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_a_sam2_checkpoint_segments_and_commits_an_object(make_napari_viewer, qtbot, sam2_checkpoint):
    from napari_sam.engine import Predictor
    from napari_sam.model import load_model
    from napari_sam.model.sam2 import Sam2

    image = W.synthetic_cells_image(150, 200, seed=5)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 900)
    layer = viewer.add_image(image, rgb=True)
    widget = GUI.open_widget(viewer)
    widget.model_picker.choose(str(sam2_checkpoint))
    widget.load_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.controller.predictor is not None, timeout=GUI.EMBED_TIMEOUT_MS)
    GUI.wait_for_embedding(qtbot, widget)
    viewer.reset_view()
    controller = widget.controller
    assert isinstance(controller.predictor.model, Sam2)

    point = np.array([75.0, 90.0])
    GUI.click(qtbot, viewer, GUI.world_of(layer, point))
    assert len(controller.points_layer.data) == 1
    assert controller.predictor.embedding.high_res_features  # SAM 2's finer features travel with the embedding
    preview = controller.preview_mask() > 0
    assert preview.any()
    # the preview is one of the masks the same model gives headless for the same click
    precision = "fp32" if controller.predictor.autocast_dtype is None else "bf16"
    headless = Predictor(load_model(sam2_checkpoint, device="cpu"), device="cpu", precision=precision)
    headless.set_image(image)
    candidates = [*headless.predict(points=[point], labels=[1])[0], *headless.predict(points=[point], labels=[1],
                                                                                       multimask=False)[0]]
    assert max(GUI.iou(preview, mask) for mask in candidates) > 0.98

    GUI.press(qtbot, viewer, Qt.Key.Key_C)
    labels = controller.labels_layer
    assert labels is not None
    np.testing.assert_array_equal(labels.data, preview.astype(labels.data.dtype))
    assert len(controller.points_layer.data) == 0
    GUI.press(qtbot, viewer, Qt.Key.Key_Z, control=True)
    assert labels.data.max() == 0  # one undo step removes the object
