"""A radiologist's loop under Xvfb: open a NIfTI CT, choose a window, box a lesion, commit, save as NIfTI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_sam._napari.annotator_widget import AnnotatorWidget
from napari_sam._napari.demo import PLUGIN, WIDGET
from napari_sam._napari.medical_io import WINDOW_KEY
from napari_sam.engine.datasets.synthetic_ct import synthetic_ct
from napari_sam.engine.metrics import mask_iou

pytestmark = pytest.mark.gui
EMBED_TIMEOUT_MS = 60_000


@pytest.fixture
def scan(tmp_path):
    """A CT saved as NIfTI with 0.7 x 0.7 x 2.5 mm voxels, an origin and the j axis running anterior (flipped)."""
    ct = synthetic_ct(shape=(8, 96, 96), n_lesions=2, seed=4)
    voxels = np.ascontiguousarray(ct.image[:, ::-1, :].transpose(2, 1, 0))
    affine = np.diag([-0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (80.0, -40.0, 12.0)
    path = tmp_path / "abdomen.nii.gz"
    nib.save(nib.Nifti1Image(voxels, affine), path)
    return path, ct


def open_annotator(viewer) -> AnnotatorWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def test_open_window_box_commit_save(make_napari_viewer, qtbot, trained_model, scan, tmp_path):
    path, ct = scan
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(path), plugin=PLUGIN)  # File > Open through the plugin's reader
    np.testing.assert_allclose(image.scale, (2.5, 0.7, 0.7), rtol=1e-6)
    widget = open_annotator(viewer)
    widget.set_model(trained_model, "test model", device="cpu", precision="fp32")
    controller = widget.controller

    widget.window_picker.choice.value = "liver"  # the user picks the preset in the combo box
    assert tuple(image.contrast_limits) == (-15.0, 135.0)  # the screen shows what SAM sees
    assert tuple(controller.intensity_range()) == (-15.0, 135.0)
    assert image.metadata[WINDOW_KEY] == "liver"
    assert "Black at -15 HU, white at 135 HU" in widget.window_picker.summary.value

    label = 1
    z = int(np.argmax((ct.lesions == label).sum(axis=(1, 2))))
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    rows, cols = np.nonzero(ct.lesions[z] == label)
    viewer.layers.selection.active = controller.boxes_layer
    r0, c0, r1, c1 = rows.min() - 1, cols.min() - 1, rows.max() + 1, cols.max() + 1
    controller.boxes_layer.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]))
    qtbot.waitUntil(lambda: controller.preview_mask().any(), timeout=EMBED_TIMEOUT_MS)
    widget.commit()
    labels = controller.labels_layer
    assert labels is not None and labels.data[z].any()
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)

    out = tmp_path / "lesion.nii.gz"
    viewer.layers.selection.active = labels
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)  # File > Save Selected Layers
    saved, source = nib.load(out), nib.load(path)
    assert saved.shape == source.shape
    np.testing.assert_array_equal(saved.affine, source.affine)
    drawn = np.asarray(saved.dataobj) > 0
    to_file_order = lambda volume: volume[:, ::-1, :].transpose(2, 1, 0)  # noqa: E731 (z, y, x) shown -> (i, j, k)
    np.testing.assert_array_equal(drawn, to_file_order(labels.data > 0))  # the file holds exactly what was drawn
    truth = to_file_order(ct.lesions == label)  # the lesion in the file's voxel order
    # ...and it is the lesion, on its plane. The bar is the nuclei-trained fixture's on this CT (v2 fills a little
    # more of the box than the lesion: 0.44 with this 1-voxel margin; v1 0.54): a flipped or shifted mask scores ~0
    assert mask_iou(drawn, truth & drawn.any(axis=(0, 1))[None, None, :]) > 0.4


def test_box_first_model_starts_and_resumes_in_box_mode(make_napari_viewer, qtbot, tiny_model, scan):
    path, _ = scan
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin=PLUGIN)
    widget = open_annotator(viewer)
    widget.set_model(tiny_model, "medsam_vit_b", device="cpu", precision="fp32")  # MedSAM's zoo name
    controller = widget.controller
    assert viewer.layers.selection.active is controller.boxes_layer or viewer.layers.selection.active == controller.boxes_layer
    assert controller.boxes_layer.mode == "add_rectangle"
    z = controller.current_plane().index_map[0]
    controller.boxes_layer.add_rectangles(np.array([[z, 20, 20], [z, 20, 60], [z, 60, 60], [z, 60, 20]]))
    qtbot.waitUntil(lambda: controller.preview_mask().any(), timeout=EMBED_TIMEOUT_MS)
    viewer.layers.selection.active = controller.labels_layer or controller.points_layer
    widget.commit()
    assert controller.labels_layer.data[z].any()
    assert viewer.layers.selection.active == controller.boxes_layer  # back to drawing the next box
    assert controller.boxes_layer.mode == "add_rectangle"
    widget.set_model(tiny_model, "vit_b", device="cpu", precision="fp32")
    assert controller.points_layer.mode == "add"


def test_segment_everything_uses_the_window(make_napari_viewer, qtbot, scan, notifications):
    from napari_sam._napari.segment_everything_widget import SegmentEverythingWidget
    from napari_sam.engine.predict.windows import WindowedVolume

    path, ct = scan
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(path), plugin=PLUGIN)
    widget = SegmentEverythingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.window_picker.windowed(image, image.data) is image.data  # nothing chosen: the engine's default
    widget.window_picker.set_window("1500,-600", emit=True)  # custom width/level: the W/L fields show
    picker = widget.window_picker
    assert not picker.width.native.isHidden() and picker.low.native.isHidden() and picker.level.value == -600
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)
    seen = widget.window_picker.windowed(image, image.data)
    assert isinstance(seen, WindowedVolume)
    np.testing.assert_array_equal(seen[2], WindowedVolume(ct.image, (-1350, 150))[2])
    picker.width.native.setValue(0)  # a width typed as 0 stops at the field's minimum, 1 HU
    assert picker.width.value == 1 and tuple(image.contrast_limits) == (-600.5, -599.5)
    # percentiles for MR and others; an impossible pair is refused with a message, the window stays
    picker.choice.value = "percentiles"
    shown = tuple(image.contrast_limits)
    assert picker.low.value == 0.5 and shown[0] < -900 and shown[1] > 100
    picker.low.value = 99.9
    assert "0 <= low < high <= 100" in picker.summary.value and tuple(image.contrast_limits) == shown
    qtbot.keyClick(widget.window_picker.choice.native, Qt.Key.Key_Home)  # back to Automatic from the keyboard
    assert widget.window_picker.choice.value == "auto"


def test_a_dicom_series_opens_in_its_own_window(make_napari_viewer, tmp_path):
    from napari_sam.engine.datasets.synthetic_ct import write_dicom_series

    ct = synthetic_ct(shape=(5, 64, 64), n_lesions=1, seed=1)
    write_dicom_series(ct.image, tmp_path, window=(150, 60))  # the scanner's display window: the liver preset
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(tmp_path), plugin=PLUGIN)  # File > Open Folder
    widget = open_annotator(viewer)
    assert widget.window_picker.choice.value == "liver"
    assert tuple(image.contrast_limits) == (-15.0, 135.0)
    assert tuple(widget.controller.intensity_range()) == (-15.0, 135.0)  # SAM sees what the screen shows


def test_3d_box_section_segments_the_slices_in_a_worker(make_napari_viewer, qtbot, trained_model, scan):
    from napari_sam._napari.box_range import BoxRangeSection
    from napari_sam._napari.propagation import propagation_of

    path, ct = scan
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(path), plugin=PLUGIN)
    widget = open_annotator(viewer)
    widget.set_model(trained_model, "medsam_vit_b", device="cpu", precision="fp32")  # box-first
    widget.window_picker.choice.value = "liver"
    controller = widget.controller
    planes = np.flatnonzero((ct.lesions == 1).any(axis=(1, 2)))
    z = int(planes[len(planes) // 2])
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    rows, cols = np.nonzero(ct.lesions[z] == 1)
    r0, c0, r1, c1 = rows.min() - 1, cols.min() - 1, rows.max() + 1, cols.max() + 1
    controller.boxes_layer.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]))
    qtbot.waitUntil(lambda: controller.preview_mask().any(), timeout=EMBED_TIMEOUT_MS)
    [section] = widget.findChildren(BoxRangeSection)
    section.first.value, section.last.value = int(planes[0]), int(planes[-1])
    section.button.clicked.emit()  # as a click on 'Segment 3D box'
    propagation = propagation_of(controller)
    qtbot.waitUntil(lambda: not propagation.running and propagation.has_result(), timeout=EMBED_TIMEOUT_MS)
    widget.commit()  # the commit key's action: the whole 3D box, one object
    labels = controller.labels_layer.data > 0
    assert labels[planes[0]: planes[-1] + 1].any(axis=(1, 2)).sum() >= len(planes) - 1
    assert not labels[: planes[0]].any() and not labels[planes[-1] + 1:].any()
    assert "Slices" in section.status.text()
