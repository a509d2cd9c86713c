"""MedSAM's 3D box in the annotator (no Qt): a box on one slice + a slice range, or boxes on two slices.

Every slice of the range gets the box (interpolated between two boxed slices); the engine is
``napari_sam.engine.predict.box_range``."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam._napari.box_range import start_box_range
from napari_sam._napari.controller import AnnotatorController
from napari_sam._napari.propagation import propagation_of
from napari_sam.engine.datasets.synthetic_ct import synthetic_ct
from napari_sam.engine.errors import InputError
from napari_sam.engine.metrics import mask_iou
from napari_sam.engine.predict.windows import parse_window, window_range


@pytest.fixture
def annotated(trained_model):
    from napari_sam.engine import Predictor

    ct = synthetic_ct(shape=(10, 96, 96), n_lesions=1, spacing=(2.5, 0.7, 0.7), seed=7)
    viewer = ViewerModel()
    image = viewer.add_image(ct.image, scale=ct.spacing)
    controller = AnnotatorController(viewer)
    controller.set_image_layer(image)
    controller.set_predictor(Predictor(trained_model, device="cpu", precision="fp32"))
    controller.set_intensity_range(window_range(parse_window("liver")))
    return viewer, image, controller, ct


def box_on(controller, image, viewer, z: int, mask2d: np.ndarray) -> None:
    rows, cols = np.nonzero(mask2d)
    r0, c0, r1, c1 = rows.min() - 1, cols.min() - 1, rows.max() + 1, cols.max() + 1
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    controller.boxes_layer.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]))


def lesion_planes(ct) -> np.ndarray:
    return np.flatnonzero((ct.lesions == 1).any(axis=(1, 2)))


def test_box_and_slice_range_segments_every_slice_of_the_range_only(annotated):
    viewer, image, controller, ct = annotated
    planes = lesion_planes(ct)
    z = int(planes[len(planes) // 2])
    box_on(controller, image, viewer, z, ct.lesions[z] == 1)
    assert controller.preview_mask().any()
    first, last = int(planes[0]), int(planes[-1])
    assert start_box_range(controller, first, last) == (first, last, None)  # no dock: run here
    label_id = propagation_of(controller).commit()
    labels = controller.labels_layer.data == label_id
    assert not labels[:first].any() and not labels[last + 1:].any()  # never outside the range
    iou = mask_iou(labels, ct.lesions == 1)
    print(f"3D box IoU over slices {first}-{last}: {iou:.3f}")
    assert iou > 0.4
    controller.labels_layer.undo()  # one undo step takes the whole object back
    assert not controller.labels_layer.data.any()


def test_boxes_on_two_slices_give_the_range(annotated):
    viewer, image, controller, ct = annotated
    planes = lesion_planes(ct)
    a, b = int(planes[0]), int(planes[-1])
    box_on(controller, image, viewer, b, ct.lesions[b] == 1)
    box_on(controller, image, viewer, a, ct.lesions[a] == 1)  # the slice shown: the seed
    assert start_box_range(controller)[:2] == (a, b)
    found = propagation_of(controller).planes_found()
    assert set(found) <= set(range(a, b + 1))
    label_id = propagation_of(controller).commit()
    labels = controller.labels_layer.data == label_id
    assert mask_iou(labels, ct.lesions == 1) > 0.35


def test_box_range_errors(annotated):
    viewer, image, controller, ct = annotated
    planes = lesion_planes(ct)
    z = int(planes[0])
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    with pytest.raises(InputError, match="Nothing to propagate"):
        start_box_range(controller, 0, 9)
    box_on(controller, image, viewer, z, ct.lesions[z] == 1)
    with pytest.raises(InputError, match="outside the range"):
        start_box_range(controller, z + 1, 9)
    with pytest.raises(InputError, match="boxes on 1 slice"):
        start_box_range(controller)


def test_interpolated_boxes():
    from napari_sam.engine.predict.box_range import interpolated_box

    boxes = {2: (10, 10, 20, 20), 6: (14, 6, 30, 20)}
    np.testing.assert_allclose(interpolated_box(boxes, 4), (12, 8, 25, 20))
    np.testing.assert_allclose(interpolated_box(boxes, 0), (10, 10, 20, 20))  # outside: the nearest box
    np.testing.assert_allclose(interpolated_box({3: (1, 2, 3, 4)}, 9), (1, 2, 3, 4))


def test_engine_box_range_stays_in_range_and_checks_it(trained_model):
    from napari_sam.engine import Predictor
    from napari_sam.engine.predict.box_range import iter_box_range

    ct = synthetic_ct(shape=(6, 64, 64), n_lesions=1, seed=3)
    predictor = Predictor(trained_model, device="cpu", precision="fp32")
    with pytest.raises(InputError, match="outside the planes 1 to 2"):
        next(iter_box_range(predictor, ct.image, {4: (1, 1, 9, 9)}, (1, 2)))
    results = list(iter_box_range(predictor, ct.image, {2: (20, 20, 40, 40)}, (1, 3), seed_plane=2))
    assert [r.plane for r in results] == [2, 1, 3]  # the seed first, then outwards
