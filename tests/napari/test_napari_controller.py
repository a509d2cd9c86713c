"""AnnotatorController with napari's ViewerModel (no Qt): prompts -> preview -> commit, nD, transforms, cache.

Geometry and bookkeeping are checked with :class:`DiscPredictor`, a stand-in
whose masks are discs centred on the prompt, so every pixel written can be
predicted exactly; the real engine runs in the tests that use ``tiny_model``
(plumbing) and ``trained_model`` (segmentation behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from napari.components import ViewerModel
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.action_manager import action_manager
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from napari.utils.key_bindings import KeymapHandler

from napari_sam._napari.controller import (
    NEGATIVE,
    POSITIVE,
    PROMPT_FEATURE,
    AnnotatorController,
)
from napari_sam.engine import Predictor
from napari_sam.engine.predict.predictor import ImageEmbedding
from napari_sam.model.config import TINY_VIT


class DiscPredictor:
    """Engine-Predictor stand-in: a disc of ``radius`` around the mean positive point.

    Each negative point shrinks the disc by 2 pixels; a box gives the box. With
    ``multimask`` three candidates of radius r, r/2, 1.5 r come back with scores
    0.5, 0.9, 0.7 (so the best is the small one). Records what it was given.
    """

    def __init__(self, radius: float = 6.0):
        self.config = TINY_VIT
        self.device = torch.device("cpu")
        self.autocast_dtype = None
        self.radius = radius
        self.embedded: list[np.ndarray] = []
        self.calls: list[dict] = []
        self._embedding = None

    def compute_embedding(self, image, intensity_range=None):
        image = np.asarray(image)
        self.embedded.append(image)
        features = torch.full((1, 1, 2, 2), float(len(self.embedded)))
        return ImageEmbedding(features, tuple(image.shape[:2]), tuple(image.shape[:2]))

    def set_embedding(self, embedding):
        self._embedding = embedding

    def encoder_fingerprint(self) -> str:
        return f"disc r={self.radius}"

    def _disc(self, center, radius):
        h, w = self._embedding.original_size
        rows, cols = np.mgrid[:h, :w]
        return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True):
        self.calls.append({"points": points, "labels": labels, "box": box, "multimask": multimask})
        h, w = self._embedding.original_size
        if box is not None and points is None:
            mask = np.zeros((h, w), bool)
            r0, c0, r1, c1 = np.round(box).astype(int)
            mask[r0 : r1 + 1, c0 : c1 + 1] = True
            return mask[None], np.array([0.8]), np.zeros((1, 4, 4))
        labels = np.asarray(labels)
        center = np.asarray(points)[labels == 1].mean(axis=0)
        radius = self.radius - 2 * (labels == 0).sum()
        if multimask:
            masks = np.stack([self._disc(center, r) for r in (radius, radius / 2, radius * 1.5)])
            return masks, np.array([0.5, 0.9, 0.7]), np.zeros((3, 4, 4))
        return self._disc(center, radius)[None], np.array([0.8]), np.zeros((1, 4, 4))

    def predict_batch(self, points=None, labels=None, boxes=None, mask_input=None, multimask=False):
        masks = []
        for box in boxes:
            m, _, _ = self.predict(box=box)
            masks.append(m)
        return np.stack(masks), np.full((len(boxes), 1), 0.8), np.zeros((len(boxes), 1, 4, 4))


@dataclass
class _MouseEvent:
    type: str
    position: tuple
    modifiers: list = field(default_factory=list)
    button: int = 1
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])


def click(layer, world_position, modifiers=(), button=1):
    """Press and release the mouse on ``layer`` at a world position, as napari's canvas does."""
    for kind, dispatch in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        event = _MouseEvent(kind, tuple(world_position), list(modifiers), button)
        dispatch(layer, ReadOnlyWrapper(event, exceptions=("handled",)))


def press_key(viewer, key):
    """Press ``key`` with the points layer active, resolving bindings as napari's canvas does."""
    handler = KeymapHandler()
    handler.keymap_providers = [viewer.layers.selection.active, viewer]
    handler.press_key(key)


def disc_image(shape=(64, 80), center=(30, 40), radius=12):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (((rows - center[0]) ** 2 + (cols - center[1]) ** 2) <= radius**2).astype(np.float32)


@pytest.fixture
def viewer():
    return ViewerModel()


def annotator(viewer, image, predictor=None, **layer_kwargs):
    layer = viewer.add_image(image, **layer_kwargs)
    controller = AnnotatorController(viewer)
    controller.set_predictor(predictor or DiscPredictor(), model_id="disc")
    controller.set_image_layer(layer)
    return controller, layer


def expected_disc(shape, center, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


# ------------------------------------------------------------------ layers
def test_helper_layers_share_the_image_transform(viewer):
    controller, image = annotator(viewer, np.zeros((4, 30, 40)), scale=(3.0, 0.5, 2.0), translate=(1.0, -2.0, 5.0))
    for layer in (controller.points_layer, controller.boxes_layer):
        np.testing.assert_array_equal(layer.scale, image.scale)
        np.testing.assert_array_equal(layer.translate, image.translate)
        assert layer.ndim == 3
    assert viewer.layers.selection.active is controller.points_layer
    assert controller.points_layer.mode == "add"


def test_click_previews_commits_as_one_undo_step(viewer):
    controller, _ = annotator(viewer, disc_image())
    click(controller.points_layer, (30, 40))
    assert controller.point_labels().tolist() == [1]
    # single click: three candidates, the best (score 0.9, radius 3) is shown
    np.testing.assert_array_equal(controller.preview_mask() > 0, expected_disc((64, 80), (30, 40), 3))
    assert controller.preview_info.n_candidates == 3 and controller.preview_info.score == pytest.approx(0.9)

    assert controller.commit() == [1]
    labels = controller.labels_layer
    np.testing.assert_array_equal(labels.data, expected_disc((64, 80), (30, 40), 3).astype(labels.data.dtype))
    assert len(controller.points_layer.data) == 0 and controller.preview_mask().sum() == 0  # prompts cleared
    labels.undo()
    assert labels.data.max() == 0  # one undo removes the whole commit
    labels.redo()
    np.testing.assert_array_equal(labels.data == 1, expected_disc((64, 80), (30, 40), 3))


def test_an_object_committed_after_an_undo_gets_the_current_class_not_the_undone_ones(viewer):
    """Undo restores pixels, not records: the id freed by an undo is reused by the next commit, which is a
    new object with the class chosen now (a redo of the undone one is impossible after a new edit)."""
    controller, _ = annotator(viewer, disc_image())
    controller.object_class = "nucleus"
    click(controller.points_layer, (30, 40))
    assert controller.commit() == [1]
    labels = controller.labels_layer
    assert list(labels.features["class"]) == ["nucleus"]
    labels.undo()
    assert len(controller.refresh_objects()) == 0
    labels.redo()  # a redo brings the object back with its class
    assert list(controller.refresh_objects()["class"]) == ["nucleus"]
    labels.undo()
    controller.object_class = "debris"
    click(controller.points_layer, (30, 40))
    assert controller.commit() == [1]  # the freed id
    assert list(labels.features["class"]) == ["debris"]


def test_shift_click_and_right_click_are_negative(viewer):
    controller, _ = annotator(viewer, disc_image())
    layer = controller.points_layer
    click(layer, (30, 40))
    click(layer, (10, 10), modifiers=["Shift"])
    click(layer, (12, 12), button=2)
    click(layer, (32, 41))
    assert list(layer.features[PROMPT_FEATURE]) == [POSITIVE, NEGATIVE, NEGATIVE, POSITIVE]
    np.testing.assert_array_equal(layer.face_color[1], [1, 0, 0, 1])  # red
    np.testing.assert_array_equal(layer.face_color[0], [0, 1, 0, 1])  # lime
    call = controller.predictor.calls[-1]
    np.testing.assert_array_equal(call["labels"], [1, 0, 0, 1])
    assert call["multimask"] is False  # several points pin the object down


def test_toggle_key_flips_selected_points(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    controller.add_point([20, 20])
    controller.points_layer.selected_data = {1}
    controller.points_layer.mode = "select"
    press_key(viewer, "T")
    assert list(controller.points_layer.features[PROMPT_FEATURE]) == [POSITIVE, NEGATIVE]
    np.testing.assert_array_equal(controller.predictor.calls[-1]["labels"], [1, 0])


def test_candidates_cycle_and_keys(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    radii = []
    for _ in range(3):
        radii.append(int(controller.preview_mask()[30].sum()))
        press_key(viewer, "N")
    assert radii == [7, 19, 13]  # best first: r = 3, 9, 6 (scores 0.9, 0.7, 0.5); widths 2r + 1
    assert int(controller.preview_mask()[30].sum()) == 7  # wrapped around
    press_key(viewer, "Shift+N")
    assert int(controller.preview_mask()[30].sum()) == 13
    press_key(viewer, "C")  # commit the shown candidate (r = 6)
    np.testing.assert_array_equal(controller.labels_layer.data == 1, expected_disc((64, 80), (30, 40), 6))
    controller.add_point([10, 10])
    press_key(viewer, "Shift+C")
    assert len(controller.points_layer.data) == 0 and controller.preview_mask().sum() == 0
    press_key(viewer, "Control+Z")
    assert controller.labels_layer.data.max() == 0
    press_key(viewer, "Control+Shift+Z")
    assert controller.labels_layer.data.max() == 1


def test_second_object_gets_next_id_and_keeps_the_first(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    controller.cycle_candidate()  # r = 9
    controller.commit()
    first = controller.labels_layer.data.copy()
    controller.add_point([30, 52])
    controller.cycle_candidate()  # r = 9, overlapping the first disc
    assert controller.commit() == [2]
    data = controller.labels_layer.data
    np.testing.assert_array_equal(data[first == 1], 1)  # the first object is intact
    new = expected_disc((64, 80), (30, 52), 9) & (first == 0)
    np.testing.assert_array_equal(data == 2, new)


def test_paint_over_overwrites(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    controller.cycle_candidate()
    controller.commit()
    controller.paint_over = True
    controller.add_point([30, 52])
    controller.cycle_candidate()
    controller.commit()
    np.testing.assert_array_equal(controller.labels_layer.data == 2, expected_disc((64, 80), (30, 52), 9))


def test_box_alone_and_several_boxes(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.boxes_layer.add_rectangles(np.array([[5, 6], [5, 20], [15, 20], [15, 6]], dtype=float))
    assert controller.preview_info.n_objects == 1 and controller.preview_info.n_candidates == 1
    assert controller.predictor.calls[-1]["box"].tolist() == [5, 6, 15, 20]
    controller.boxes_layer.add_rectangles(np.array([[40, 50], [40, 60], [50, 60], [50, 50]], dtype=float))
    assert controller.preview_info.n_objects == 2
    assert controller.commit() == [1, 2]
    data = controller.labels_layer.data
    assert (data[5:16, 6:21] == 1).all() and (data[40:51, 50:61] == 2).all()
    assert (data > 0).sum() == 11 * 15 + 11 * 11
    assert len(controller.boxes_layer.data) == 0


def test_only_negative_points_make_no_preview(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40], positive=False)
    assert controller.preview_mask().sum() == 0 and controller.predictor.calls == []
    assert controller.commit() == []


def test_points_outside_the_image_are_ignored(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    controller.add_point([-20, 500])
    np.testing.assert_array_equal(controller.predictor.calls[-1]["points"], [[30, 40]])


# -------------------------------------------------------------- nD, transforms
def test_3d_stack_works_on_the_viewed_slice_only(viewer):
    stack = np.stack([disc_image()] * 5)
    controller, image = annotator(viewer, stack, scale=(2.0, 1.0, 1.0))
    viewer.dims.set_point(0, 3 * 2.0)  # world z of slice 3
    assert controller.current_plane().index_map == {0: 3}
    controller.add_point([3, 30, 40])
    controller.add_point([1, 10, 10])  # a prompt on another slice: not used here
    np.testing.assert_array_equal(controller.predictor.calls[-1]["points"], [[30, 40]])
    np.testing.assert_array_equal(controller.predictor.embedded[-1], stack[3])
    # the one-plane preview sits on slice 3
    np.testing.assert_array_equal(controller.preview_layer.translate, [6.0, 0.0, 0.0])
    assert controller.preview_layer.data.shape == (1, 64, 80)
    controller.commit()
    data = controller.labels_layer.data
    assert data.shape == (5, 64, 80)
    assert data[3].max() == 1 and data[[0, 1, 2, 4]].max() == 0
    # the prompt of slice 1 is still there, only slice 3's were cleared
    np.testing.assert_array_equal(controller.points_layer.data, [[1, 10, 10]])
    viewer.dims.set_point(0, 1 * 2.0)
    assert controller.preview_mask().sum() > 0  # slice 1's prompt is decoded when we get there
    controller.labels_layer.undo()
    assert controller.labels_layer.data.max() == 0


def test_scaled_and_translated_layer_maps_clicks(viewer):
    controller, image = annotator(viewer, disc_image(), scale=(0.5, 2.0), translate=(10.0, -4.0))
    world = (10.0 + 0.5 * 30, -4.0 + 2.0 * 40)  # world position of data pixel (30, 40)
    click(controller.points_layer, world)
    np.testing.assert_allclose(controller.predictor.calls[-1]["points"], [[30, 40]])
    controller.commit()
    np.testing.assert_array_equal(controller.labels_layer.data == 1, expected_disc((64, 80), (30, 40), 3))
    np.testing.assert_array_equal(controller.labels_layer.scale, image.scale)
    np.testing.assert_array_equal(controller.labels_layer.translate, image.translate)


def test_4d_with_viewer_of_higher_ndim_and_rgb(viewer):
    rgb = np.zeros((2, 3, 20, 24, 3), np.uint8)
    rgb[1, 2, 5:15, 5:15] = 255
    viewer.add_image(np.zeros((7, 2, 3, 20, 24)))  # the viewer has one more axis than the RGB layer
    controller, image = annotator(viewer, rgb, rgb=True)
    viewer.dims.set_point(1, 1)
    viewer.dims.set_point(2, 2)
    plane = controller.current_plane()
    assert plane.index_map == {0: 1, 1: 2} and plane.axes == (2, 3)
    controller.add_point([1, 2, 10, 10])
    np.testing.assert_array_equal(controller.predictor.embedded[-1], rgb[1, 2])
    controller.commit()
    assert controller.labels_layer.data.shape == (2, 3, 20, 24)
    assert controller.labels_layer.data[1, 2].max() == 1 and controller.labels_layer.data.sum() == 29  # r = 3


def test_3d_view_gives_a_message_not_a_crash(viewer):
    controller, _ = annotator(viewer, np.zeros((3, 20, 20)))
    messages = []
    controller.status_changed.connect(messages.append)
    viewer.dims.ndisplay = 3
    assert any("2D" in m for m in messages)


# --------------------------------------------------------------- embeddings
def test_embeddings_are_cached_per_slice(viewer):
    stack = np.stack([disc_image() * (i + 1) for i in range(3)])
    controller, _ = annotator(viewer, stack)
    predictor = controller.predictor
    viewer.dims.set_point(0, 0)
    controller.add_point([0, 30, 40])
    viewer.dims.set_point(0, 2)
    controller.add_point([2, 30, 40])
    assert len(predictor.embedded) == 2
    viewer.dims.set_point(0, 0)
    controller.add_point([0, 31, 40])
    assert len(predictor.embedded) == 2  # revisiting slice 0 reused its embedding
    assert controller.has_embedding() and not controller.has_embedding(controller.missing_planes()[0])


def test_one_intensity_range_for_the_whole_stack(viewer):
    stack = np.stack([disc_image() * 100, disc_image() * 1000]).astype(np.uint16)
    controller, _ = annotator(viewer, stack)
    lo, hi = controller.intensity_range()
    assert hi >= 1000 * 0.99  # from the whole stack, not from one slice


def test_dask_stack_reads_only_what_it_needs(viewer):
    da = pytest.importorskip("dask.array")
    reads = []

    def load_block(block, block_info=None):
        reads.append(block_info[None]["chunk-location"][0])
        return block

    lazy = da.from_array(np.stack([disc_image()] * 40), chunks=(1, 64, 80)).map_blocks(load_block, dtype=np.float32)
    controller, _ = annotator(viewer, lazy)
    reads.clear()  # napari's own display of the middle slice
    controller.intensity_range()
    assert len(set(reads)) <= 8  # a few planes sampled for the intensity range
    reads.clear()
    viewer.dims.set_point(0, 17)
    controller.add_point([17, 30, 40])
    assert set(reads) == {17}
    assert controller.labels_layer is None or controller.labels_layer.data.shape == (40, 64, 80)


def test_save_and_load_embeddings(viewer, tmp_path):
    controller, image = annotator(viewer, np.stack([disc_image()] * 2))
    controller.ensure_embedding()
    controller.save_embeddings(tmp_path / "emb.zarr")
    viewer.dims.set_point(0, 1)
    controller.ensure_embedding()  # written through to the store

    other = AnnotatorController(ViewerModel())
    other.viewer.add_image(image.data)
    other.set_predictor(DiscPredictor(), model_id="disc")
    other.set_image_layer(other.viewer.layers[0])
    assert other.load_embeddings(tmp_path / "emb.zarr") == 2
    other.viewer.dims.set_point(0, 1)
    other.add_point([1, 30, 40])
    assert other.predictor.embedded == []  # nothing recomputed

    wrong_model = AnnotatorController(ViewerModel())
    wrong_model.viewer.add_image(image.data)
    wrong_model.set_predictor(DiscPredictor(), model_id="another model")
    wrong_model.set_image_layer(wrong_model.viewer.layers[0])
    with pytest.raises(ValueError, match="another image or model"):
        wrong_model.load_embeddings(tmp_path / "emb.zarr")

    # another image of the same shape and dtype (e.g. the next file of a folder): refused too
    shifted = np.roll(image.data, 5, axis=-1)
    other_image = AnnotatorController(ViewerModel())
    other_image.viewer.add_image(shifted)
    other_image.set_predictor(DiscPredictor(), model_id="disc")
    other_image.set_image_layer(other_image.viewer.layers[0])
    with pytest.raises(ValueError, match="another image or model"):
        other_image.load_embeddings(tmp_path / "emb.zarr")


def test_background_embedding_requests_once(viewer):
    controller, _ = annotator(viewer, disc_image())
    requested = []
    controller.embed_in_background = requested.append
    controller.add_point([30, 40])
    controller.add_point([31, 40])
    assert len(requested) == 1 and controller.preview_mask().sum() == 0
    assert "embedding" in controller.preview_info.describe()
    for plane, embedding, generation in controller.embedding_job(requested)():
        controller.store_embedding(plane, embedding, generation)
    assert controller.preview_mask().sum() > 0  # the waiting prompts are decoded when it arrives


def test_stale_embeddings_are_dropped(viewer):
    controller, _ = annotator(viewer, disc_image())
    job = controller.embedding_job([controller.current_plane()])
    controller.set_predictor(DiscPredictor(), model_id="new model")  # the model changed while the job ran
    for plane, embedding, generation in job():
        controller.store_embedding(plane, embedding, generation)
    assert not controller.has_embedding()


def test_removing_the_image_resets(viewer):
    controller, image = annotator(viewer, disc_image())
    viewer.layers.remove(image)
    assert controller.image_layer is None
    assert [layer.name for layer in viewer.layers] == []


# ------------------------------------------------------------- real engine
def test_real_predictor_end_to_end(viewer, tiny_model):
    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    controller, _ = annotator(viewer, disc_image(), predictor)
    controller.add_point([30, 40])
    info = controller.preview_info
    assert info.n_candidates == 3
    scores = [info.score]
    for _ in range(2):
        controller.cycle_candidate()
        scores.append(controller.preview_info.score)
    assert scores == sorted(scores, reverse=True)  # best first
    controller.cycle_candidate()  # back to the best
    preview = controller.preview_mask() > 0

    # the same prompt straight through the engine gives the same best mask
    predictor.set_image(disc_image(), intensity_range=controller.intensity_range())
    masks, engine_scores, _ = predictor.predict(points=[[30, 40]], labels=[1])
    np.testing.assert_array_equal(preview, masks[engine_scores.argmax()])
    assert info.score == pytest.approx(float(engine_scores.max()), abs=1e-5)

    ids = controller.commit()
    assert ids == ([1] if preview.any() else [])
    np.testing.assert_array_equal(controller.labels_layer.data == 1, preview)


def test_multiscale_image_uses_full_resolution_plane(viewer):
    full = np.stack([disc_image()] * 3)
    pyramid = [full, full[:, ::2, ::2]]
    controller, image = annotator(viewer, pyramid, multiscale=True)
    viewer.dims.set_point(0, 2)
    controller.add_point([2, 30, 40])
    np.testing.assert_array_equal(controller.predictor.embedded[-1], full[2])
    controller.commit()
    assert controller.labels_layer.data.shape == full.shape and controller.labels_layer.data[2].max() == 1


def test_removed_helper_layers_come_back_when_the_image_is_chosen_again(viewer):
    controller, image = annotator(viewer, disc_image())
    viewer.layers.remove(controller.points_layer)
    assert controller.points_layer is None
    controller.set_image_layer(image)
    assert controller.points_layer in viewer.layers
    controller.add_point([30, 40])
    assert controller.preview_mask().sum() > 0


def test_works_through_napari_public_only_proxy():
    """Plugin widgets get the viewer wrapped in napari's PublicOnlyProxy: layer identity must not matter."""
    import warnings

    from napari.utils._proxies import PublicOnlyProxy

    real = ViewerModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # private attribute access through the proxy warns
        controller, image = annotator(PublicOnlyProxy(real), np.stack([disc_image()] * 3))
        real.dims.set_point(0, 1)
        click(real.layers["SAM points"], (1, 30, 40))
        assert controller.commit() == [1]
        assert real.layers["SAM labels"].data[1].max() == 1
        controller.labels_layer.undo()
        assert real.layers["SAM labels"].data.max() == 0
        real.layers.remove(real.layers["SAM labels"])
        assert controller.labels_layer is None
        real.layers.remove(real.layers[0])
        assert controller.image_layer is None and len(real.layers) == 0


def test_moving_or_deleting_a_prompt_updates_the_preview(viewer):
    controller, _ = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    layer = controller.points_layer
    layer.data = np.array([[20.0, 50.0]])  # what dragging the point in select mode ends with
    np.testing.assert_array_equal(controller.preview_mask() > 0, expected_disc((64, 80), (20, 50), 3))
    layer.selected_data = {0}
    layer.remove_selected()
    assert controller.preview_mask().sum() == 0 and controller.preview_info.n_objects == 0


def test_a_channels_first_looking_image_says_how_it_is_read(viewer):
    controller = AnnotatorController(viewer)
    controller.set_predictor(DiscPredictor(), model_id="disc")
    messages = []
    controller.status_changed.connect(messages.append)
    controller.set_image_layer(viewer.add_image(np.stack([disc_image()] * 3)))  # (3, H, W): 3 planes or RGB?
    assert any("read as a stack of 3" in m and "np.moveaxis" in m for m in messages)
    messages.clear()
    controller.set_image_layer(viewer.add_image(np.stack([disc_image()] * 5)))  # clearly a stack
    assert not any("channels-first" in m for m in messages)


def test_the_commit_key_works_with_the_image_layer_selected(viewer):
    controller, image = annotator(viewer, disc_image())
    controller.add_point([30, 40])
    action_manager.bind_shortcut("napari:auto_contrast_once", "C")  # as napari's Qt viewer does at start
    viewer.layers.selection.active = image  # napari's Image layer binds C to auto-contrast
    press_key(viewer, "C")
    assert controller.labels_layer is not None and controller.labels_layer.data.max() == 1
    assert viewer.layers.selection.active == controller.points_layer  # ready for the next object
    controller.close()
    assert "C" not in {str(key) for key in image.keymap}  # the image's own C is back


def test_planes_are_named_with_the_slider_axis_label_and_position(viewer):
    viewer.add_image(np.zeros((20, 16, 16), np.float32))  # the slider counts 0..19
    controller, _ = annotator(viewer, np.zeros((5, 16, 16), np.float32), scale=(2, 1, 1), translate=(10, 0, 0))
    viewer.dims.set_current_step(0, 14)
    plane = controller.current_plane()
    assert plane.index_map == {0: 2}  # data plane 2 at world z = 10 + 2 * 2 = step 14
    assert controller.describe(plane) == f"slice 14 (axis {viewer.dims.axis_labels[0]})"
    viewer.dims.axis_labels = ("z", "y", "x")
    assert controller.describe(plane) == "slice z=14"


def test_the_3d_hint_gives_way_to_the_next_step(viewer):
    controller, _ = annotator(viewer, np.zeros((3, 16, 16), np.float32))
    controller.ensure_embedding()
    viewer.dims.ndisplay = 3
    assert "switch the viewer to 2D" in controller.status_text
    viewer.dims.ndisplay = 2
    assert "2D" not in controller.status_text and "click an object" in controller.status_text


def test_a_window_set_while_a_worker_estimates_the_range_is_kept(viewer, monkeypatch):
    """An embedding worker estimating the range (slow: it reads planes) must not overwrite a window
    the user chose meanwhile (seen in CI: the liver window replaced by the estimate)."""
    from napari_sam._napari import planes as plane_ops

    controller, layer = annotator(viewer, np.stack([disc_image()] * 3))
    estimate = plane_ops.layer_intensity_range

    def slow_estimate(image_layer):
        result = estimate(image_layer)
        controller.set_intensity_range((-15.0, 135.0))  # the user picks a window before it returns
        return result

    monkeypatch.setattr(plane_ops, "layer_intensity_range", slow_estimate)
    controller.intensity_range()  # what the worker calls
    assert tuple(controller.intensity_range()) == (-15.0, 135.0)
