"""State and behaviour of the interactive annotator for one viewer (no Qt).

:class:`AnnotatorController` ties an image layer, a predictor and four helper
layers together:

* ``SAM points``  (Points): click = positive prompt, Shift+click or right click =
  negative; colour-coded (green / red) through the ``prompt`` feature;
* ``SAM boxes``   (Shapes): rectangles as box prompts;
* ``SAM preview`` (Labels): the mask of the current prompts, one plane only;
* the target Labels layer that commits write into, as one undo step each.

Everything works on the plane the viewer shows (:mod:`.planes`). It needs only
a ``napari.components.ViewerModel``, so it is tested without a display; the Qt
widget (:mod:`.annotator_widget`) is a thin layer on top that runs embeddings in a thread
worker. Computation is the engine's: the predictor decodes, and
:mod:`napari_sam.engine.predict.prompts` turns layer data into prompts and masks into
label writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from psygnal import Signal

from napari_sam._napari import keys
from napari_sam._napari import planes as plane_ops
from napari_sam._napari.medical_io import labels_metadata
from napari_sam._napari.planes import Plane
from napari_sam.engine import labels as label_ops
from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import channels_first_hint
from napari_sam.engine.predict import prompts as prompt_ops
from napari_sam.engine.predict.embedding_cache import DEFAULT_MAX_BYTES, EmbeddingCache
from napari_sam.model.config import NEGATIVE as SAM_NEGATIVE
from napari_sam.model.config import POSITIVE as SAM_POSITIVE

if TYPE_CHECKING:
    from napari_sam.engine.predict.protocol import PredictorProtocol

PROMPT_FEATURE = "prompt"
POSITIVE, NEGATIVE = "positive", "negative"
PROMPT_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}
PREVIEW_COLOR = "yellow"  # one colour for the preview, unlike any committed label

# The viewer's shortcuts are napari actions (see .keys: remappable in Preferences > Shortcuts).
KEY_TOGGLE_SIGN = "T"  # on the points layer only: flip positive/negative of the selected points

# Mouse gestures and layer keys the dock lists before the registered shortcuts.
GESTURES: tuple[tuple[str, str], ...] = (
    ("Click", "positive point (SAM points layer, add mode)"),
    ("Shift+click, right click", "negative point"),
    ("R, drag", "box (select SAM boxes first)"),
    (KEY_TOGGLE_SIGN, "flip the selected points +/-"),
)
ROLE = "napari_sam_role"  # layer.metadata key marking the helper layers


@dataclass(frozen=True)
class PreviewInfo:
    """What the preview shows: ``n_objects`` masks; for one object its candidate number and score."""

    n_objects: int = 0
    candidate: int = 0  # 0-based index among the candidates, best first
    n_candidates: int = 0
    score: float | None = None
    message: str = ""

    def describe(self) -> str:
        if self.message:
            return self.message
        if self.n_objects == 0:
            return "No prompts on this slice: click an object (points layer) or draw a box."
        if self.n_objects > 1:
            return f"{self.n_objects} objects (one per box)."
        if self.n_candidates > 1:
            position = f"Candidate {self.candidate + 1}/{self.n_candidates}"
            return f"{position}, score {self.score:.3f} ({keys.shortcut_text('napari-sam:next_candidate')}: next)"
        return f"Score {self.score:.3f}"


@dataclass
class _Prediction:
    """Masks of the current prompts of one plane: candidates of one object, or one mask per box."""

    plane: Plane
    masks: np.ndarray  # (K, H, W) bool: candidates best first, or objects
    scores: np.ndarray  # (K,)
    candidates: bool  # True: K alternatives for one object; False: K separate objects
    index: int = 0

    def object_masks(self) -> list[np.ndarray]:
        return [self.masks[self.index]] if self.candidates else list(self.masks)


def _same(a, b) -> bool:
    """Whether two layers are the same one; ``==`` sees through napari's PublicOnlyProxy, ``is`` does not."""
    return a is b or (a is not None and b is not None and a == b)


class AnnotatorController:
    """Interactive SAM annotation in one viewer: prompts -> preview -> commit.

    ``embed_in_background``: when set (by the Qt widget) it is called with a
    :class:`Plane` whose embedding is missing and must arrange for
    :meth:`store_embedding` to be called later; when None, embeddings are
    computed synchronously (tests, scripts).
    """

    status_changed = Signal(str)
    preview_changed = Signal(object)  # PreviewInfo
    plane_changed = Signal(object)  # Plane
    image_changed = Signal(object)  # image layer or None
    embedding_stored = Signal(object)  # Plane

    def __init__(self, viewer, cache_max_bytes: int = DEFAULT_MAX_BYTES):
        self.viewer = viewer
        self.cache_max_bytes = cache_max_bytes
        self.predictor: PredictorProtocol | None = None
        self.model_id: str | None = None
        self.image_layer = None
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self.labels_layer = None
        self.paint_over = False
        self.embed_in_background: Callable[[Plane], None] | None = None
        self.preview_info = PreviewInfo()
        self._prediction: _Prediction | None = None
        self._preview_plane: Plane | None = None
        self._caches: dict[str, EmbeddingCache] = {}
        self._intensity_ranges: dict[str, tuple | None] = {}
        self._predictor_key: tuple | None = None  # (layer id, plane key) set in the predictor
        self._generation = 0  # bumped when image, model or image data change: older embeddings are stale
        self._pending: set[tuple] = set()  # (layer id, plane key) being embedded in background
        self._updates_suspended = False
        self.status_text = ""
        self._status_passing = False  # the status names a passing state (computing, 3D view), see _settle_status
        viewer.dims.events.point.connect(self._on_dims_changed)
        viewer.dims.events.order.connect(self._on_dims_changed)
        viewer.dims.events.ndisplay.connect(self._on_dims_changed)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        keys.register(viewer, self)
        self._layer_keys = keys.LayerKeys(viewer)

    # ================================================================ setup
    def set_predictor(self, predictor: PredictorProtocol | None, model_id: str | None = None) -> None:
        """Use ``predictor`` (SAM's :class:`~napari_sam.engine.Predictor` or another backend); drops cached embeddings."""
        self.predictor = predictor
        self.model_id = model_id or (predictor.config.name if predictor is not None else None)
        self._forget_embeddings()
        self._set_status(f"Model: {self.model_id} on {predictor.device}" if predictor is not None else "No model.")
        self.update_preview()

    def set_image_layer(self, layer) -> None:
        """Annotate ``layer`` (an Image layer, or None): (re)creates the prompt and preview layers for it."""
        if _same(layer, self.image_layer) and (layer is None or self._helper_layers_present()):
            return
        if self.image_layer is not None:
            with contextlib.suppress(TypeError, ValueError):
                self.image_layer.events.data.disconnect(self._on_image_data_changed)
        self._remove_helper_layers()
        self.image_layer = layer
        self._prediction = None
        self._predictor_key = None
        self._generation += 1
        if layer is None:
            self.image_changed.emit(None)
            return
        if self.labels_layer is not None and plane_ops.spatial_shape(layer) != self.labels_layer.data.shape:
            self.labels_layer = None  # the old target does not fit this image; a new one is made on commit
        layer.events.data.connect(self._on_image_data_changed)
        self._create_helper_layers()
        self.image_changed.emit(layer)
        self.update_preview()
        if not getattr(layer, "rgb", False):
            hint = channels_first_hint(plane_ops.spatial_shape(layer))
            if hint is not None:  # shown, not refused: a 3-plane stack is as likely as a channels-first RGB
                self._set_status(hint)

    def set_labels_layer(self, layer) -> None:
        """Commit into ``layer`` (a Labels layer of the image's shape), or None to create one on first commit."""
        if layer is not None and self.image_layer is not None:
            expected = plane_ops.spatial_shape(self.image_layer)
            if tuple(layer.data.shape) != expected:
                raise InputError(
                    f"The labels layer '{layer.name}' has shape {tuple(layer.data.shape)}, but the image "
                    f"'{self.image_layer.name}' has shape {expected}; choose a matching labels layer or a new one."
                )
        self.labels_layer = layer

    def close(self) -> None:
        """Disconnect from the viewer (the layers stay)."""
        for signal, slot in (
            (self.viewer.dims.events.point, self._on_dims_changed),
            (self.viewer.dims.events.order, self._on_dims_changed),
            (self.viewer.dims.events.ndisplay, self._on_dims_changed),
            (self.viewer.layers.events.removed, self._on_layer_removed),
        ):
            with contextlib.suppress(TypeError, ValueError):
                signal.disconnect(slot)
        self._layer_keys.close()
        keys.unregister(self.viewer, self)

    # ======================================================== helper layers
    def _create_helper_layers(self) -> None:
        image = self.image_layer
        ndim = image.ndim
        transform = plane_ops.transform_kwargs(image)
        plane = self.current_plane()
        self.preview_layer = self.viewer.add_labels(
            np.zeros(self._preview_shape(plane), dtype=np.uint8),
            name="SAM preview",
            opacity=0.5,
            colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"}),
            metadata={ROLE: "preview"},
            **{**transform, "translate": self._preview_translate(plane)},
        )
        self._preview_plane = plane
        self.boxes_layer = self.viewer.add_shapes(
            ndim=ndim,
            name="SAM boxes",
            metadata={ROLE: "boxes"},
            edge_color="yellow",
            face_color="transparent",
            edge_width=max(1.0, 0.004 * max(plane_ops.plane_shape(image, plane))),
            **transform,
        )
        self.points_layer = self.viewer.add_points(
            np.zeros((0, ndim)),
            ndim=ndim,
            name="SAM points",
            metadata={ROLE: "points"},
            features={PROMPT_FEATURE: np.array([], dtype=object)},
            feature_defaults={PROMPT_FEATURE: POSITIVE},
            face_color=PROMPT_FEATURE,
            face_color_cycle=PROMPT_COLORS,
            border_color="white",
            size=max(6.0, 0.02 * max(plane_ops.plane_shape(image, plane))),
            **transform,
        )
        self.points_layer.mouse_drag_callbacks.append(self._choose_point_sign)
        self.points_layer.bind_key(KEY_TOGGLE_SIGN, lambda _layer: self.toggle_selected_points(), overwrite=True)
        for layer in (self.points_layer, self.boxes_layer):
            layer.events.data.connect(self._on_prompts_changed)
        self.activate_points()

    def _helper_layers_present(self) -> bool:
        return all(
            layer is not None and layer in self.viewer.layers
            for layer in (self.points_layer, self.boxes_layer, self.preview_layer)
        )

    def _remove_helper_layers(self) -> None:
        for name in ("points_layer", "boxes_layer", "preview_layer"):
            layer = getattr(self, name)
            setattr(self, name, None)
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def _preview_shape(self, plane: Plane) -> tuple[int, ...]:
        return plane_ops.one_plane_shape(self.image_layer, plane)

    def _preview_translate(self, plane: Plane) -> np.ndarray:
        """Translate that puts the one-plane preview on ``plane``."""
        return plane_ops.one_plane_transform(self.image_layer, plane)["translate"]

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if _same(layer, self.image_layer):
            self.set_image_layer(None)
            return
        for name in ("points_layer", "boxes_layer", "preview_layer", "labels_layer"):
            if _same(getattr(self, name), layer):
                setattr(self, name, None)
        if self.preview_layer is None:
            self._prediction = None

    # ============================================================== planes
    def current_plane(self) -> Plane:
        """The plane of the image layer that the viewer shows (InputError in a 3D view)."""
        if self.image_layer is None:
            raise InputError("Choose an image layer first.")
        return plane_ops.current_plane(self.viewer, self.image_layer)

    def _layer_id(self) -> str:
        return str(self.image_layer.unique_id)

    def cache(self) -> EmbeddingCache:
        """The embedding cache of the current image layer and model."""
        layer_id = self._layer_id()
        cache = self._caches.get(layer_id)
        if cache is None:
            cache = self._caches[layer_id] = EmbeddingCache(self.cache_max_bytes)
        return cache

    def _forget_embeddings(self) -> None:
        self._caches.clear()
        self._pending.clear()
        self._predictor_key = None
        self._generation += 1

    def intensity_range(self, layer=None):
        """One intensity range for every plane of ``layer`` (default: the current image), computed once.

        Safe to call from a worker thread (the first call reads a few planes).
        """
        layer = layer if layer is not None else self.image_layer
        layer_id = str(layer.unique_id)
        if layer_id not in self._intensity_ranges:
            estimate = plane_ops.layer_intensity_range(layer)
            # setdefault: a window the user set while this estimate was read (worker thread) wins
            return self._intensity_ranges.setdefault(layer_id, estimate)
        return self._intensity_ranges[layer_id]

    def set_intensity_range(self, value) -> None:
        """Scale every plane of the image with ``value`` = (low, high), e.g. a CT window (None: estimate it)."""
        self._intensity_ranges.pop(self._layer_id(), None)  # None: estimated again when next needed
        if value is not None:
            self._intensity_ranges[self._layer_id()] = value
        self._forget_embeddings()
        self.update_preview()

    def cache_fingerprint(self) -> dict:
        """What a saved embedding cache must match: the image's pixels, the encoder's weights,
        the model name, the intensity range (see ``engine.predict.fingerprint``)."""
        from napari_sam.engine.predict.fingerprint import cache_fingerprint

        image = self.image_layer
        return cache_fingerprint(
            plane_ops.base_data(image),
            self.predictor,
            intensity_range=self.intensity_range(),
            model=self.model_id,
            rgb=bool(getattr(image, "rgb", False)),
        )

    def save_embeddings(self, path) -> int:
        """Save the current image's embeddings to a zarr directory (later ones are added as computed)."""
        count = self._fingerprinted_cache().save(path)
        self._set_status(f"{count} embeddings saved in {path}; new ones are added as they are computed.")
        return count

    def load_embeddings(self, path) -> int:
        """Use embeddings saved earlier for this image and model (InputError if they do not match)."""
        count = self._fingerprinted_cache().load(path)
        self._set_status(f"{count} embeddings available from {path}.")
        self.update_preview()
        return count

    def _fingerprinted_cache(self):
        """This image's embedding cache, tagged with the image and model it belongs to (for save/load)."""
        self._require_model_and_image()
        cache = self.cache()
        cache.set_fingerprint(self.cache_fingerprint())
        return cache

    def _require_model_and_image(self) -> None:
        if self.image_layer is None:
            raise InputError("Choose an image layer first.")
        if self.predictor is None:
            raise InputError("Choose a model first.")

    def has_embedding(self, plane: Plane | None = None) -> bool:
        if self.image_layer is None or self.predictor is None:
            return False
        plane = plane or self.current_plane()
        return plane.key in self.cache()

    def missing_planes(self, planes=None) -> list[Plane]:
        """Planes without an embedding; default: every plane of the current image on the displayed axes."""
        if planes is None:
            planes = plane_ops.all_planes(self.image_layer, self.current_plane().axes)
        cache = self.cache()
        return [plane for plane in planes if plane.key not in cache]

    def embedding_job(self, planes: list[Plane]) -> Callable[[], Iterator[tuple[Plane, object, int]]]:
        """A generator function that embeds ``planes`` of the current image with the current model.

        Meant for a worker thread: it captures the layer and predictor now and
        changes no state; it yields ``(plane, embedding, generation)`` to pass to
        :meth:`store_embedding` on the main thread.
        """
        self._require_model_and_image()
        layer, predictor, generation = self.image_layer, self.predictor, self._generation

        def run() -> Iterator[tuple[Plane, object, int]]:
            intensity = self.intensity_range(layer)
            for plane in planes:
                image = plane_ops.read_plane(layer, plane)
                yield plane, predictor.compute_embedding(image, intensity_range=intensity), generation

        return run

    def store_embedding(self, plane: Plane, embedding, generation: int | None = None) -> None:
        """Cache ``embedding`` of ``plane`` (main thread); refresh the preview if it is the plane shown."""
        if self.image_layer is None or (generation is not None and generation != self._generation):
            return  # image, model or data changed while the worker ran
        self._pending.discard((self._layer_id(), plane.key))
        self.cache().put(plane.key, embedding)
        self.embedding_stored.emit(plane)
        with contextlib.suppress(InputError):
            if plane == self.current_plane():
                self._settle_status(plane)
                self.update_preview()

    def clear_pending(self) -> None:
        """Forget the embeddings requested from ``embed_in_background`` (its worker ended or was cancelled)."""
        self._pending.clear()

    def ensure_embedding(self, plane: Plane | None = None) -> bool:
        """Make sure ``plane`` (default: current) has an embedding; True when it is available now.

        With ``embed_in_background`` set, a missing embedding is requested from it
        (once) and False is returned; otherwise it is computed here and now.
        """
        if self.image_layer is None or self.predictor is None:
            return False
        plane = plane or self.current_plane()
        if self.has_embedding(plane):
            return True
        if self.embed_in_background is not None:
            pending_key = (self._layer_id(), plane.key)
            if pending_key not in self._pending:
                self._pending.add(pending_key)
                self._set_status(f"Computing the image embedding ({self.describe(plane)})...", passing=True)
                self.embed_in_background(plane)
            return False
        for done_plane, embedding, _generation in self.embedding_job([plane])():
            self.cache().put(done_plane.key, embedding)
        return True

    def _activate_embedding(self, plane: Plane) -> None:
        key = (self._layer_id(), plane.key)
        if self._predictor_key != key:
            self.predictor.set_embedding(self.cache().get(plane.key, device=self.predictor.device))
            self._predictor_key = key

    # ============================================================= prompts
    def point_labels(self) -> np.ndarray:
        """(M,) 1 positive / 0 negative for every point of the points layer."""
        if self.points_layer is None or len(self.points_layer.data) == 0:
            return np.zeros(0, dtype=int)
        signs = np.asarray(self.points_layer.features[PROMPT_FEATURE], dtype=object)
        return np.where(signs == NEGATIVE, SAM_NEGATIVE, SAM_POSITIVE).astype(int)

    def prompts_on_plane(self, plane: Plane) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points (N, 2) (row, col), labels (N,) and boxes (K, 4) of ``plane``, in the image's data frame."""
        shape = plane_ops.plane_shape(self.image_layer, plane)
        index = plane.index_map
        if self.points_layer is not None:
            points, labels = prompt_ops.points_on_plane(
                self.points_layer.data, self.point_labels(), plane.axes, index, shape
            )
        else:
            points, labels = np.zeros((0, 2)), np.zeros(0, dtype=int)
        boxes = np.zeros((0, 4))
        if self.boxes_layer is not None:
            boxes = prompt_ops.boxes_on_plane(self.boxes_layer.data, plane.axes, index, shape)
        return points, labels, boxes

    def add_point(self, data_coords, positive: bool = True) -> None:
        """Add a prompt point at nD ``data_coords`` of the image, as a (shift-)click would."""
        self.points_layer.feature_defaults = {PROMPT_FEATURE: POSITIVE if positive else NEGATIVE}
        self.points_layer.add(np.asarray(data_coords, dtype=float))
        self.points_layer.feature_defaults = {PROMPT_FEATURE: POSITIVE}

    def _choose_point_sign(self, layer, event):
        """Mouse press on the points layer: Shift or the right button makes the next point negative."""
        negative = "Shift" in event.modifiers or getattr(event, "button", 1) == 2
        layer.feature_defaults = {PROMPT_FEATURE: NEGATIVE if negative else POSITIVE}
        yield  # the point itself is added on release by napari's own add-mode callback

    def toggle_selected_points(self) -> None:
        """Flip positive <-> negative for the selected points."""
        layer = self.points_layer
        selected = sorted(layer.selected_data) if layer is not None else []
        if not selected:
            self._set_status("Select points (select mode, S) to flip them between positive and negative.")
            return
        features = layer.features.copy()
        current = features.loc[selected, PROMPT_FEATURE].to_numpy()
        features.loc[selected, PROMPT_FEATURE] = np.where(current == NEGATIVE, POSITIVE, NEGATIVE)
        layer.features = features
        layer.refresh_colors()
        self.update_preview()

    def _on_prompts_changed(self, event) -> None:
        # data events come in pairs (adding/added, ...); act once the change is done
        if getattr(event, "action", None) in ("added", "changed", "removed") and not self._updates_suspended:
            self.update_preview()

    def _on_dims_changed(self, event=None) -> None:
        if self.image_layer is None:
            return
        try:
            plane = self.current_plane()
        except InputError as err:
            self._set_status(str(err), passing=True)
            return
        self._settle_status(plane)
        if plane != self._preview_plane:
            self.plane_changed.emit(plane)
            self.update_preview()

    def _on_image_data_changed(self, event=None) -> None:
        self._intensity_ranges.pop(self._layer_id(), None)
        self._forget_embeddings()
        self.update_preview()

    # ============================================================= preview
    def update_preview(self) -> None:
        """Decode the prompts of the current plane and show the result in the preview layer."""
        if self.image_layer is None or self.preview_layer is None or self._updates_suspended:
            return
        try:
            plane = self.current_plane()
        except InputError as err:
            self._set_status(str(err), passing=True)
            return
        points, labels, boxes = self.prompts_on_plane(plane)
        if len(boxes) == 0 and not (labels == SAM_POSITIVE).any():
            self._show(plane, None, PreviewInfo())
            return
        if self.predictor is None:
            self._show(plane, None, PreviewInfo(message="Choose a model to segment."))
            return
        if not self.ensure_embedding(plane):
            self._show(plane, None, PreviewInfo(message="Computing the image embedding..."))
            return
        try:
            # a corrupt saved cache entry surfaces here as InputError: say so in the preview
            self._activate_embedding(plane)
            prediction = self._predict(plane, points, labels, boxes)
        except InputError as err:
            self._show(plane, None, PreviewInfo(message=str(err)))
            return
        self._show(plane, prediction)

    def _predict(self, plane: Plane, points, labels, boxes) -> _Prediction:
        if len(boxes) > 1:
            # several boxes: one object each, decoded together; points cannot be assigned to one box
            masks, scores, _ = self.predictor.predict_batch(boxes=boxes, multimask=False)
            return _Prediction(plane, masks[:, 0], scores[:, 0], candidates=False)
        point_args = (points, labels) if len(points) else (None, None)
        box = boxes[0] if len(boxes) else None
        # SAM's advice: a lone click is ambiguous (3 candidates); more prompts pin the object down
        multimask = len(points) == 1 and box is None
        masks, scores, _ = self.predictor.predict(*point_args, box=box, multimask=multimask)
        order = prompt_ops.candidate_order(scores)
        return _Prediction(plane, masks[order], scores[order], candidates=True)

    def _show(self, plane: Plane, prediction: _Prediction | None, info: PreviewInfo | None = None) -> None:
        self._prediction = prediction
        layer = self.preview_layer
        if plane != self._preview_plane:
            layer.translate = self._preview_translate(plane)
            self._preview_plane = plane
        shape = self._preview_shape(plane)
        data = np.zeros(plane_ops.plane_shape(self.image_layer, plane), dtype=np.uint8)
        if prediction is not None:
            for k, mask in enumerate(prediction.object_masks()):
                data[mask & (data == 0)] = min(k + 1, 255)
            info = PreviewInfo(
                n_objects=len(prediction.object_masks()),
                candidate=prediction.index,
                n_candidates=len(prediction.masks) if prediction.candidates else 1,
                score=float(prediction.scores[prediction.index]) if prediction.candidates else None,
            )
        if tuple(layer.data.shape) == shape:
            # in place + refresh: a new array would make napari recompute the scene extent on every click
            layer.data[...] = data.reshape(shape)
            layer.refresh()
        else:
            layer.data = data.reshape(shape)
        self.preview_info = info or PreviewInfo()
        self.preview_changed.emit(self.preview_info)

    def preview_mask(self) -> np.ndarray:
        """The preview as an (H, W) label plane of the plane it shows (0 = nothing)."""
        data = np.asarray(self.preview_layer.data)
        return data.reshape(plane_ops.plane_shape(self.image_layer, self._preview_plane))

    def cycle_candidate(self, step: int = 1) -> None:
        """Show the next (``step`` = 1) or previous candidate of an ambiguous single click."""
        prediction = self._prediction
        if prediction is None or not prediction.candidates or len(prediction.masks) < 2:
            self._set_status("Only a single click has alternative candidates.")
            return
        prediction.index = (prediction.index + step) % len(prediction.masks)
        self._show(prediction.plane, prediction)

    def commit_and_continue(self) -> list[int]:
        """:meth:`commit`, then back to the points layer in add mode, ready for the next object's click."""
        written = self.commit()
        self.activate_points()
        return written

    prompt_mode = "points"  # "box" for a box-first model (MedSAM, see model.zoo): start and resume with boxes

    def activate_points(self) -> None:
        """Select the prompt points layer in add mode (the boxes layer in rectangle mode for a box-first model)."""
        if self.prompt_mode == "box" and self.boxes_layer is not None and self.boxes_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.boxes_layer
            self.boxes_layer.mode = "add_rectangle"
        elif self.points_layer is not None and self.points_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.points_layer
            self.points_layer.mode = "add"

    # ============================================================== commit
    def ensure_labels_layer(self):
        """The target Labels layer, created (empty, same shape and transform as the image) if needed."""
        if self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            image = self.image_layer
            self.labels_layer = self.viewer.add_labels(
                np.zeros(plane_ops.spatial_shape(image), dtype=np.uint32),
                name="SAM labels",
                metadata=labels_metadata(image),  # a scan's geometry: File > Save Layers writes NIfTI in it
                **plane_ops.transform_kwargs(image),
            )
            # keep the prompt layers on top and the points layer active
            for layer in (self.preview_layer, self.boxes_layer, self.points_layer):
                if layer is not None:
                    self.viewer.layers.move(self.viewer.layers.index(layer), len(self.viewer.layers))
            if self.points_layer is not None:
                self.viewer.layers.selection.active = self.points_layer
        self._watch_labels()
        return self.labels_layer

    def commit(self) -> list[int]:
        """Write the preview into the labels layer as ONE undo step, then clear this plane's prompts.

        New objects get the next free ids; after :meth:`start_resegment` the preview
        replaces that object instead. Without ``paint_over`` only background (and, when
        re-segmenting, the object's own) pixels are written. Each object's score is kept
        in the labels' ``features``. Returns the ids written (empty if nothing was).
        """
        prediction = self._prediction
        if prediction is None or self.image_layer is None:
            self._set_status("Nothing to commit: add prompts first.")
            return []
        if prediction.plane != self.current_plane():
            self._set_status("The preview belongs to another slice; go back to it or add prompts here.")
            return []
        masks = prediction.object_masks()
        if not any(mask.any() for mask in masks):
            # checked before the labels layer is made: an empty commit must leave no trace
            self._set_status("The mask is empty: nothing to commit.")
            return []
        if self.resegment_id is not None:
            return self._commit_resegment(prediction)
        labels = self.ensure_labels_layer()
        plane = prediction.plane
        first_id = label_ops.next_free_label(labels.data)
        if first_id + len(masks) - 1 > np.iinfo(labels.data.dtype).max:
            raise InputError(f"The labels layer '{labels.name}' ({labels.data.dtype}) has no free ids left.")
        existing = np.asarray(labels.data[plane.selector(labels.ndim)])
        rows, cols, values = label_ops.commit_pixels(existing, masks, first_id, self.paint_over)
        written = sorted({int(v) for v in np.unique(values)})
        scores = self._object_scores(prediction)
        self._write_plane(labels, plane, rows, cols, values, {i: scores[i - first_id] for i in written})
        self._set_status(
            f"Committed id(s) {', '.join(map(str, written))} to '{labels.name}'."
            if written
            else "The mask covers only existing labels; nothing written (enable 'paint over' to overwrite)."
        )
        self.clear_prompts()
        return written

    def clear_prompts(self) -> None:
        """Remove the points and boxes of the current plane and clear the preview."""
        if self.image_layer is None:
            return
        plane = self.current_plane()
        with self._suspend_updates():
            for layer in (self.points_layer, self.boxes_layer):
                if layer is None or len(layer.data) == 0:
                    continue
                if _same(layer, self.points_layer):
                    on = prompt_ops.on_plane(layer.data, plane.axes, plane.index_map)
                else:
                    on = np.array([prompt_ops.on_plane(v, plane.axes, plane.index_map).all() for v in layer.data])
                indices = np.flatnonzero(on).tolist()
                if indices:
                    layer.remove(indices)
        self.update_preview()

    @contextlib.contextmanager
    def _suspend_updates(self):
        previous, self._updates_suspended = self._updates_suspended, True
        try:
            yield
        finally:
            self._updates_suspended = previous

    def _set_status(self, text: str, passing: bool = False) -> None:
        """Show ``text``; ``passing``: it describes a state that ends (see :meth:`_settle_status`)."""
        self.status_text = text
        self._status_passing = passing
        self.status_changed.emit(text)

    def _settle_status(self, plane: Plane) -> None:
        """Replace a passing status (computing, 3D view) that no longer holds by the next step on ``plane``."""
        if not self._status_passing:
            return
        where = self.describe(plane)
        if self.predictor is None:
            self._set_status("Load a model to segment.")
        elif self.has_embedding(plane):
            self._set_status(f"Ready ({where}): click an object or draw a box.")
        elif (self._layer_id(), plane.key) in self._pending:
            self._set_status(f"Computing the image embedding ({where})...", passing=True)
        else:
            self._set_status(f"This slice ({where}) has no embedding yet: Embed slice computes it.")

    def describe(self, plane: Plane) -> str:
        """``plane`` of the current image named as napari's sliders show it (e.g. 'slice z=14')."""
        return plane_ops.describe_plane(self.viewer, self.image_layer, plane)

    # ========================================================= object list
    # The committed objects: their score, class and plane are kept in labels.metadata
    # (they survive undo, which only restores pixels, so a redo gets them back; a new commit reusing a
    # freed id starts a fresh record); the labels' ``features`` table is
    # rebuilt from the pixels + that record by refresh_objects (areas are always counted).
    OBJECTS_METADATA = "napari_sam_objects"  # labels.metadata key of the record
    OBJECT_COLUMNS = ("index", "area", "score", "class", "plane")
    objects_changed = Signal(object)  # the new features table (DataFrame), or None: pixels changed, refresh
    resegment_id: int | None = None  # set by start_resegment: the next commit replaces this object
    object_class = ""  # the class a committed object without one gets (set by the class picker)
    _watched_labels = None  # the labels layer whose edits emit objects_changed

    def _object_scores(self, prediction: _Prediction) -> list[float]:
        """The score of each object that ``prediction.object_masks()`` returns."""
        if prediction.candidates:
            return [float(prediction.scores[prediction.index])]
        return [float(score) for score in prediction.scores]

    def _write_plane(self, labels, plane: Plane, rows, cols, values, scores: dict[int, float],
                     same_objects: bool = False) -> None:
        """Write ``values`` at plane pixels (rows, cols) as ONE undo step; record the objects (``record_object``).

        ``same_objects``: the ids are existing objects re-segmented, which keep their class.
        """
        if len(rows):
            with labels.block_history():  # one undo step for the whole commit
                labels.data_setitem(plane.full_index(rows, cols, labels.ndim), values.astype(labels.data.dtype))
        for label_id, score in scores.items():
            self.record_object(labels, label_id, score, self.describe(plane), same_objects)
        self.refresh_objects()

    def record_object(self, labels, label_id: int, score: float, where: str, same_object: bool = False) -> None:
        """Keep a committed object's score, class and where it was committed in ``labels``' records.

        ``same_object``: an existing object re-segmented keeps its class; a new one (its id maybe one an
        undo freed, whose record is stale) gets the class chosen now (``object_class``).
        """
        records = self._object_records(labels)
        kept = records.get(label_id, {}).get("class", "") if same_object else ""
        records[label_id] = {"score": score, "class": kept or self.object_class, "plane": where}

    def _object_records(self, labels) -> dict[int, dict]:
        """{id: {"score", "class", "plane"}} kept with ``labels`` (created empty)."""
        return labels.metadata.setdefault(self.OBJECTS_METADATA, {})

    def refresh_objects(self):
        """Rebuild the labels' ``features`` from its pixels; return it (a DataFrame, one row per id present).

        Columns: ``index`` (the id), ``area`` (pixels over all planes), ``score`` (of the
        committed mask; NaN for objects painted by hand), ``class`` and ``plane`` (where it
        was committed). An id with no pixels left (deleted, undone) has no row.
        """
        import pandas as pd

        labels = self.labels_layer
        if labels is None or labels not in self.viewer.layers:
            table = pd.DataFrame({column: [] for column in self.OBJECT_COLUMNS})
            self.objects_changed.emit(table)
            return table
        self._watch_labels()
        ids, areas = label_ops.object_areas(labels.data)
        records = self._object_records(labels)
        rows = [records.get(int(i), {}) for i in ids]
        table = pd.DataFrame(
            {
                "index": ids,
                "area": areas,
                "score": [row.get("score", np.nan) for row in rows],
                "class": [row.get("class", "") for row in rows],
                "plane": [row.get("plane", "") for row in rows],
            }
        )
        if not table.equals(labels.features):
            labels.features = table
        self.objects_changed.emit(table)
        return table

    def _watch_labels(self) -> None:
        """Follow edits of the current labels layer (painting, undo, redo) to keep the object list current."""
        labels = self.labels_layer
        if _same(labels, self._watched_labels):
            return
        old, self._watched_labels = self._watched_labels, labels
        for layer, connect in ((old, False), (labels, True)):
            if layer is None:
                continue
            for emitter in (layer.events.paint, layer.events.data, layer.events.set_data):
                if connect:
                    emitter.connect(self._on_labels_edited)
                else:
                    with contextlib.suppress(TypeError, ValueError):
                        emitter.disconnect(self._on_labels_edited)

    def _on_labels_edited(self, event=None) -> None:
        # set_data also comes with every slider move, but it is the only event of an undo or redo
        # (napari has no public history event): listeners debounce before recounting
        self.objects_changed.emit(None)

    def _require_object(self, label_id: int):
        labels = self.labels_layer
        if labels is None or labels not in self.viewer.layers:
            raise InputError("No labels layer yet: commit an object first.")
        if not (np.asarray(labels.data) == label_id).any():
            raise InputError(f"The labels layer '{labels.name}' has no object {label_id} (deleted or undone?).")
        return labels

    def show_object(self, label_id: int) -> None:
        """Show only object ``label_id`` and move the sliders to the plane where it has most pixels."""
        labels = self._require_object(label_id)
        labels.selected_label = label_id
        labels.show_selected_label = True
        with contextlib.suppress(InputError):  # in a 3D view no slider needs moving
            axes = plane_ops.displayed_layer_axes(self.viewer, labels)
            where = label_ops.object_plane(labels.data, label_id, axes)
            if where:
                position = np.asarray(labels.world_to_data(self.viewer.dims.point), dtype=float)
                for axis, index in where.items():
                    position[axis] = index
                world = labels.data_to_world(position)
                offset = self.viewer.dims.ndim - labels.ndim
                for axis in where:
                    self.viewer.dims.set_point(axis + offset, world[axis])
        self._set_status(f"Showing object {label_id} only ('Show all' shows every object).")

    def show_all_objects(self) -> None:
        """Show every object of the labels layer again."""
        if self.labels_layer is not None:
            self.labels_layer.show_selected_label = False

    def delete_object(self, label_id: int) -> None:
        """Erase object ``label_id`` from every plane, as ONE undo step."""
        labels = self._require_object(label_id)
        pixels = label_ops.object_pixels(labels.data, label_id)
        with labels.block_history():
            labels.data_setitem(pixels, np.zeros(len(pixels[0]), dtype=labels.data.dtype))
        if self.resegment_id == label_id:
            self.cancel_resegment()
        self.refresh_objects()
        self._set_status(f"Deleted object {label_id} ({len(pixels[0])} pixels); Ctrl+Z brings it back.")

    def start_resegment(self, label_id: int) -> None:
        """Make the next commit replace object ``label_id`` (in the plane annotated) by the preview."""
        self._require_object(label_id)
        self.resegment_id = label_id
        self._set_status(
            f"Re-segmenting object {label_id}: add prompts on a slice and commit them; "
            "its old pixels in that slice are replaced."
        )

    def cancel_resegment(self) -> None:
        """Go back to normal commits (new ids)."""
        if self.resegment_id is not None:
            self.resegment_id = None
            self._set_status("Back to normal commits: each commit adds a new object.")

    def _commit_resegment(self, prediction: _Prediction) -> list[int]:
        label_id = self.resegment_id
        masks = prediction.object_masks()
        if len(masks) != 1:
            raise InputError(f"Re-segmenting takes one object: use one box or points, not {len(masks)} boxes.")
        labels = self.ensure_labels_layer()
        plane = prediction.plane
        existing = np.asarray(labels.data[plane.selector(labels.ndim)])
        rows, cols, values = label_ops.resegment_pixels(existing, masks[0], label_id, self.paint_over)
        self.resegment_id = None  # before the write: listeners of objects_changed see normal commits again
        self._write_plane(labels, plane, rows, cols, values, {label_id: self._object_scores(prediction)[0]},
                          same_objects=True)
        self._set_status(f"Object {label_id} re-segmented on {self.describe(plane)}; Ctrl+Z restores it.")
        self.clear_prompts()
        return [label_id]
