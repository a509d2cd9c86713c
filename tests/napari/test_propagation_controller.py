"""Propagate in the annotator with napari's ViewerModel (no Qt): a click, Propagate, commit, undo, correct.

The real engine and the tiny SAM trained on synthetic nuclei (``trained_model``) on a
small synthetic stack; the propagation runs synchronously (no dock sets
``run_in_background``), as in a script. The stack's embeddings are computed once for the
module and given to each test's annotator, as "Load embeddings" would (the slow step on
a CPU; the propagation itself still decodes every plane).
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_sam._napari import keys
from napari_sam._napari.controller import AnnotatorController
from napari_sam._napari.propagation import (
    PREVIEW_NAME,
    propagation_axis,
    propagation_of,
    stack_view,
)
from napari_sam.engine import Predictor
from napari_sam.engine.datasets.synthetic import synthetic_volume
from napari_sam.engine.errors import InputError

MIN_IOU = 0.5  # 3D IoU of the propagated object with the truth (the engine's own tests hold the quality bar)




@pytest.fixture(scope="module")
def stack():
    return synthetic_volume((8, 128, 128), seed=5, z_spacing=2.0)


@pytest.fixture(scope="module")
def stack_embeddings(trained_model_path, stack):
    """{plane key: embedding} of every plane of ``stack`` with the trained model, as the annotator computes them."""
    from napari_sam.model import load_model

    viewer = ViewerModel()
    controller, image = start(viewer, stack.image, load_model(trained_model_path, device="cpu"))
    for z in range(len(stack.image)):
        go_to(viewer, image, 0, z)
        assert controller.ensure_embedding()
    cache = controller.cache()
    return {key: cache.get(key) for key in cache.keys()}


def tall_object(labels: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(id, plane, (row, col)) of an object spanning >= 4 planes, clicked deep inside on its widest plane."""
    from scipy import ndimage

    best = None
    for label_id in np.unique(labels[labels > 0]):
        mask = labels == label_id
        planes = np.flatnonzero(mask.any(axis=(1, 2)))
        if len(planes) < 4 or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any():
            continue
        z = int(np.argmax(mask.sum(axis=(1, 2))))
        depth = ndimage.distance_transform_edt(np.pad(mask[z], 1))[1:-1, 1:-1]
        if best is None or depth.max() > best[0]:
            best = (depth.max(), int(label_id), z, np.array(np.unravel_index(np.argmax(depth), depth.shape), float))
    assert best is not None, "the synthetic stack has a tall object"
    return best[1], best[2], best[3]


def start(viewer, image, model, embeddings=None, **layer_kwargs):
    layer = viewer.add_image(image, **layer_kwargs)
    controller = AnnotatorController(viewer)
    controller.set_predictor(Predictor(model, device="cpu", precision="fp32"), model_id="trained")
    controller.set_image_layer(layer)
    for key, embedding in (embeddings or {}).items():
        controller.cache().put(key, embedding)
    return controller, layer


def go_to(viewer, layer, axis: int, index: int) -> None:
    world = layer.data_to_world(np.eye(layer.ndim)[axis] * index)
    viewer.dims.set_point(axis + viewer.dims.ndim - layer.ndim, world[axis])


def rectangle(plane: int, row0, col0, row1, col1) -> np.ndarray:
    """The four corners of a rectangle on ``plane`` of a 3D layer (as drawing one gives)."""
    return np.array([[plane, row0, col0], [plane, row0, col1], [plane, row1, col1], [plane, row1, col0]], float)


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_click_propagate_commit_one_id_in_several_planes_one_undo_step(stack, stack_embeddings, trained_model):
    viewer = ViewerModel()
    controller, image = start(viewer, stack.image, trained_model, stack_embeddings, scale=(2.0, 1.0, 1.0))
    truth_id, z, center = tall_object(stack.labels)
    # an object drawn by hand before, far from the one propagated: it must stay as it is
    before = np.zeros(stack.image.shape, dtype=np.uint32)
    before[0, :4, :4] = 7
    labels = viewer.add_labels(before.copy(), scale=(2.0, 1.0, 1.0), name="cells")
    controller.set_labels_layer(labels)
    go_to(viewer, image, 0, z)
    controller.add_point([z, *center])
    propagation = propagation_of(controller)
    propagation.start("both")

    preview = viewer.layers[PREVIEW_NAME]
    shown = np.asarray(preview.data) > 0
    assert shown.shape == stack.image.shape
    found = propagation.planes_found()
    assert len(found) >= 3 and z in found
    np.testing.assert_array_equal(preview.scale, image.scale)

    assert keys.ACTION_BY_NAME["napari-sam:commit"].run(controller) == 8  # the commit key commits the 3D object
    data = np.asarray(labels.data)
    written = data != before
    assert set(np.unique(data[written])) == {8}
    np.testing.assert_array_equal(written, shown & (before == 0))  # exactly the preview, nothing else
    assert sorted(np.flatnonzero((data == 8).any(axis=(1, 2)))) == found
    assert iou(data == 8, stack.labels == truth_id) > MIN_IOU
    assert PREVIEW_NAME not in viewer.layers and len(controller.points_layer.data) == 0
    record = labels.metadata[controller.OBJECTS_METADATA][8]
    assert record["plane"] == f"slice {found[0]} to {found[-1]} (axis -3)" and np.isfinite(record["score"])

    labels.undo()
    np.testing.assert_array_equal(labels.data, before)  # ONE undo removes every plane
    labels.redo()
    np.testing.assert_array_equal(labels.data, data)


def test_a_correction_re_propagates_from_the_corrected_plane_and_keeps_the_other_side(
    stack, stack_embeddings, trained_model
):
    viewer = ViewerModel()
    controller, image = start(viewer, stack.image, trained_model, stack_embeddings)
    _, z, center = tall_object(stack.labels)
    go_to(viewer, image, 0, z)
    controller.add_point([z, *center])
    propagation = propagation_of(controller)
    propagation.start("both")
    first = np.asarray(viewer.layers[PREVIEW_NAME].data) > 0
    found = propagation.planes_found()
    corrected = found[-1] if found[-1] != z else found[0]
    # the user fixes that slice: a box a little smaller than the object shown there
    rows, cols = np.nonzero(first[corrected])
    go_to(viewer, image, 0, corrected)
    controller.boxes_layer.add_rectangles(
        rectangle(corrected, rows.min() + 1, cols.min() + 1, rows.max() - 1, cols.max() - 1)
    )
    corrected_mask = controller.preview_mask() > 0
    request = propagation.make_request("both")
    assert request.previous is propagation.result  # a correction, not a new object
    propagation.start("both")
    second = np.asarray(viewer.layers[PREVIEW_NAME].data) > 0
    np.testing.assert_array_equal(second[corrected], corrected_mask)  # the user's correction is kept
    far_side = range(0, z) if corrected > z else range(z + 1, len(first))
    for plane in far_side:  # the planes on the other side of the seed are not recomputed
        np.testing.assert_array_equal(second[plane], first[plane])
    label_id = propagation.commit()
    data = np.asarray(controller.labels_layer.data)
    np.testing.assert_array_equal(data == label_id, second)
    assert len(controller.points_layer.data) == 0 and len(controller.boxes_layer.data) == 0  # both slices' prompts


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: np.zeros((64, 64), np.float32), "is 2D"),
        (lambda: np.zeros((4, 64, 64), np.float32), "Nothing to propagate"),
    ],
    ids=["2D image", "no prompt"],
)
def test_bad_input_is_a_clear_message_and_the_labels_stay(make, message, tiny_model):
    viewer = ViewerModel()
    controller, image = start(viewer, make(), tiny_model)
    labels = viewer.add_labels(np.ones(image.data.shape, dtype=np.uint8), name="mine")
    controller.set_labels_layer(labels)
    with pytest.raises(InputError, match=message):
        propagation_of(controller).start()
    keys.run_action("napari-sam:propagate", viewer)  # the key says it in the status line
    assert message in controller.status_text
    assert (labels.data == 1).all() and PREVIEW_NAME not in viewer.layers
    assert propagation_of(controller).commit() is None  # nothing to commit: nothing written
    assert (labels.data == 1).all()


def test_several_boxes_are_refused(tiny_model):
    viewer = ViewerModel()
    controller, image = start(viewer, np.zeros((3, 64, 64), np.float32), tiny_model)
    z = controller.current_plane().index_map[0]
    for r in (5, 30):
        controller.boxes_layer.add_rectangles(rectangle(z, r, 5, r + 20, 25))
    with pytest.raises(InputError, match="2 boxes"):
        propagation_of(controller).make_request()


def test_the_axis_is_the_slider_the_arrow_keys_move_and_a_4d_image_keeps_its_time_point():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((3, 5, 16, 20), np.float32))  # (t, z, y, x)
    controller = AnnotatorController(viewer)
    controller.set_image_layer(layer)
    viewer.dims.set_point(0, 2)
    viewer.dims.set_point(1, 3)
    plane = controller.current_plane()
    viewer.dims.last_used = 1
    assert propagation_axis(viewer, layer, plane) == 1
    viewer.dims.last_used = 0
    assert propagation_axis(viewer, layer, plane) == 0
    volume, axis = stack_view(layer, plane, 1)
    assert volume.shape == (5, 16, 20) and axis == 0
    np.testing.assert_array_equal(volume, layer.data[2])
    viewer.dims.order = (0, 2, 1, 3)  # show (z, x): slices along y
    plane = controller.current_plane()
    volume, axis = stack_view(layer, plane, 2)
    assert volume.shape == (5, 16, 20) and axis == 1


def test_re_segment_of_a_propagated_object_corrects_it_and_keeps_its_id(stack, stack_embeddings, trained_model):
    viewer = ViewerModel()
    controller, image = start(viewer, stack.image, trained_model, stack_embeddings)
    _, z, center = tall_object(stack.labels)
    go_to(viewer, image, 0, z)
    controller.add_point([z, *center])
    propagation = propagation_of(controller)
    propagation.start()
    label_id = propagation.commit()
    found = list(np.flatnonzero((controller.labels_layer.data == label_id).any(axis=(1, 2))))
    committed = propagation.result_of(label_id)
    assert committed is not None
    # the object list's Re-segment, then a box on the last slice: a correction of the committed object
    controller.start_resegment(label_id)
    last = found[-1] if found[-1] != z else found[0]
    go_to(viewer, image, 0, last)
    rows, cols = np.nonzero(controller.labels_layer.data[last] == label_id)
    controller.boxes_layer.add_rectangles(rectangle(last, rows.min(), cols.min(), rows.max(), cols.max()))
    assert propagation.make_request().previous is committed
    propagation.start()
    shown = np.asarray(viewer.layers[PREVIEW_NAME].data) > 0
    assert propagation.commit() == label_id
    data = np.asarray(controller.labels_layer.data)
    np.testing.assert_array_equal(data == label_id, shown)  # replaced everywhere, same id
    assert set(np.unique(data)) == {0, label_id}
    controller.labels_layer.undo()  # one undo brings the first propagation back
    assert sorted(np.flatnonzero((controller.labels_layer.data == label_id).any(axis=(1, 2)))) == found


def test_a_4d_movie_of_stacks_propagates_through_z_at_the_time_point_shown(stack, trained_model):
    _, z, center = tall_object(stack.labels)
    first = min(max(z - 2, 0), len(stack.image) - 5)
    movie = np.zeros((2, 5, *stack.image.shape[1:]), np.float32)  # (t, z, y, x): the stack at t = 1 only
    movie[1] = stack.image[first : first + 5]
    viewer = ViewerModel()
    controller, image = start(viewer, movie, trained_model)
    viewer.dims.set_point(0, 1)
    viewer.dims.set_point(1, z - first)
    viewer.dims.last_used = 1  # the z slider
    controller.add_point([1, z - first, *center])
    propagation = propagation_of(controller)
    propagation.start()
    assert propagation.request.axis == 1
    preview = viewer.layers[PREVIEW_NAME]
    assert preview.data.shape == (1, *movie.shape[1:])  # one time point's stack, not the movie
    label_id = propagation.commit()
    data = np.asarray(controller.labels_layer.data)
    assert data[0].max() == 0  # nothing written at the other time point
    planes = sorted(np.flatnonzero((data[1] == label_id).any(axis=(1, 2))))
    assert z - first in planes and len(planes) >= 3


def test_nan_in_a_slice_reached_is_a_clear_error_and_writes_nothing(stack, stack_embeddings, trained_model):
    _, z, center = tall_object(stack.labels)
    broken = stack.image.copy()
    neighbour = z + 1 if z + 1 < len(broken) else z - 1
    broken[neighbour, :3, :3] = np.nan
    viewer = ViewerModel()
    controller, image = start(viewer, broken, trained_model, {k: v for k, v in stack_embeddings.items() if k[-1] == z})
    labels = viewer.add_labels(np.zeros(broken.shape, np.uint16), name="mine")
    controller.set_labels_layer(labels)
    go_to(viewer, image, 0, z)
    controller.add_point([z, *center])
    propagation = propagation_of(controller)
    with pytest.raises(InputError, match="NaN"):
        propagation.start()
    assert not propagation.running
    assert labels.data.max() == 0


def test_propagate_before_the_slice_is_embedded_says_to_wait(tiny_model):
    viewer = ViewerModel()
    controller, image = start(viewer, np.zeros((3, 64, 64), np.float32), tiny_model)
    controller.embed_in_background = lambda plane: None  # as the dock's worker, still computing
    z = controller.current_plane().index_map[0]
    controller.add_point([z, 30, 30])
    with pytest.raises(InputError, match="still being computed"):
        propagation_of(controller).make_request()


def test_a_propagated_object_gets_the_class_picked_for_new_objects(stack, stack_embeddings, trained_model):
    viewer = ViewerModel()
    controller, image = start(viewer, stack.image, trained_model, stack_embeddings)
    truth_id, z, center = tall_object(stack.labels)
    go_to(viewer, image, 0, z)
    controller.object_class = "nucleus"  # what the Class section's "New objects" sets
    controller.add_point([z, *center])
    propagation = propagation_of(controller)
    propagation.start("both")
    label_id = propagation.commit()
    labels = controller.labels_layer
    assert labels.metadata[controller.OBJECTS_METADATA][label_id]["class"] == "nucleus"
