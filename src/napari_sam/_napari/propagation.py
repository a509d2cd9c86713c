"""Propagate: carry the annotator's current object through a stack or a movie (no Qt).

:class:`PropagationController` sits on an :class:`~.controller.AnnotatorController`.
From the object on the plane shown (its yellow preview, or its prompts), the
engine's :func:`~napari_sam.engine.iter_propagation` segments it plane after plane
along the *propagation axis* (the slider the arrow keys move, see :func:`propagation_axis`);
each plane is shown as it comes in a ``SAM propagation`` Labels layer that covers
the whole stack, so the 3D view shows it too. Commit writes the object with ONE new
id into every plane it reaches, as ONE undo step, and nothing outside those planes.

A correction: with a propagation shown (or after choosing Re-segment on an object
that was propagated here), new prompts on another plane and Propagate again re-run
from that plane with ``previous=`` the last result; the engine keeps the planes on the
far side of the correction.

Frames: the engine sees a *stack view* (Z, H, W[, C]) of the image: Z along the
propagation axis, (H, W) the plane's (row, col) axes (see :func:`stack_view`); plane
``z`` of it is the layer's index ``z`` on that axis, the other axes fixed where the
viewer stands.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from psygnal import Signal

from napari_sam._napari import planes as plane_ops
from napari_sam._napari.controller import PREVIEW_COLOR, ROLE, AnnotatorController
from napari_sam._napari.planes import Plane
from napari_sam._napari.propagation_commit import clear_prompts, pixels_to_write
from napari_sam.engine import labels as label_ops
from napari_sam.engine.errors import InputError
from napari_sam.model.config import POSITIVE

if TYPE_CHECKING:
    from napari_sam.engine.volume.propagate import PlaneResult, PropagationResult

PREVIEW_NAME = "SAM propagation"
PREVIEW_ROLE = "propagation"
# direction values of the engine, and what the dock calls them
DIRECTIONS: dict[str, str] = {
    "both": "both ways",
    "forward": "to higher slice numbers",
    "backward": "to lower slice numbers",
}


def propagation_axis(viewer, layer, plane: Plane) -> int:
    """The data axis of ``layer`` to propagate along: the slider the arrow keys move.

    napari's ``dims.last_used`` is the slider the arrow keys step; when it is one of
    the layer's axes off the plane it is used, otherwise the plane's last other axis
    (the slider nearest the image: z in (t, z, y, x)).

    Parameters
    ----------
    viewer
        The viewer (its ``dims``).
    layer
        The image layer; ``plane`` is in its data frame.
    plane
        The plane shown (see :func:`~.planes.current_plane`).

    Raises
    ------
    InputError
        When ``layer`` has no axis besides the plane's (a 2D image).
    """
    others = [axis for axis, _ in plane.index]
    if not others:
        raise InputError(
            f"The image '{layer.name}' is 2D: Propagate carries an object through the slices of a stack "
            "or the frames of a movie. Open a 3D image (or a time series) to use it."
        )
    offset = viewer.dims.ndim - layer.ndim  # a layer's axes are the viewer's last layer.ndim axes
    used = int(viewer.dims.last_used) - offset
    return used if used in others else others[-1]


def stack_view(layer, plane: Plane, axis: int) -> tuple[Any, int]:
    """The 3D volume through ``plane`` that propagation along ``axis`` sees, and ``axis`` in it.

    A 3D image is its own data (so the engine's plane keys, (row_axis, col_axis, index),
    are the annotator's, and both share embeddings); a 4D image's other axes (time,
    say) stay at ``plane``'s index. The volume's axes keep the layer's order, so the
    engine's planes are (rows, cols) = ``plane.axes``. Nothing is read.

    Parameters
    ----------
    layer
        An Image layer (level 0 of a multiscale one).
    plane
        The plane shown; its index fixes every axis but ``axis`` and its own.
    axis
        The layer's data axis to propagate along.

    Returns
    -------
    volume, volume_axis
        The volume (3 axes, plus the channels of an RGB layer) and the propagation axis in it.
    """
    index = plane.index_map
    kept = sorted((axis, *plane.axes))
    selector = [slice(None) if a in kept else index[a] for a in range(layer.ndim)]
    if getattr(layer, "rgb", False):
        selector.append(slice(None))
    data = plane_ops.base_data(layer)
    volume = data if len(kept) == layer.ndim else data[tuple(selector)]
    return volume, kept.index(axis)


def plane_at(plane: Plane, axis: int, z: int) -> Plane:
    """``plane`` moved to index ``z`` on ``axis``."""
    return Plane(plane.axes, tuple((a, z if a == axis else i) for a, i in plane.index))


@dataclass
class PropagationRequest:
    """One press of Propagate: what the engine is asked, captured on the main thread."""

    image: Any  # the Image layer
    plane: Plane  # the plane the prompts are on (the seed, or the corrected plane)
    axis: int  # the layer's data axis propagated along
    volume: Any  # stack_view(image, plane, axis): 3 axes in the layer's order (+ RGB channels)
    volume_axis: int  # ``axis`` in ``volume``
    seed_mask: np.ndarray | None  # (H, W) bool: the candidate the user chose; None: the prompts' best
    points: np.ndarray | None  # (N, 2) (row, col) or None
    labels: np.ndarray | None  # (N,) 1/0
    box: np.ndarray | None  # (4,) (row0, col0, row1, col1)
    direction: str
    previous: PropagationResult | None = None  # a correction of this result
    options: dict = field(default_factory=dict)  # intensity_range, spacing, ...
    # a 3D box (MedSAM): {plane: box}; every plane of options["z_range"] is segmented with the box
    # (interpolated between boxed planes) instead of propagating
    boxes: dict | None = None

    @property
    def seed(self) -> int:
        return self.plane.index_map[self.axis]

    @property
    def n_planes(self) -> int:
        return int(self.volume.shape[self.volume_axis])

    def shares_embeddings(self) -> bool:
        """Whether the engine's plane keys are the annotator's (a 3D image): then both use one cache."""
        return self.image.ndim == 3

    def planes_to_compute(self) -> int:
        """At most how many planes the engine computes (for a progress bar)."""
        if self.direction == "forward":
            return self.n_planes - self.seed
        if self.direction == "backward":
            return self.seed + 1
        return self.n_planes


_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # annotator controller -> propagation


def propagation_of(annotator: AnnotatorController) -> PropagationController:
    """The propagation of ``annotator`` (made on first use), as the shortcuts find it.

    Parameters
    ----------
    annotator
        The annotator of a viewer.
    """
    propagation = _of.get(annotator)
    if propagation is None:
        propagation = PropagationController(annotator)
    return propagation


def propagate(annotator: AnnotatorController) -> None:
    """The Propagate key: propagate the object shown from the plane shown (the dock's direction).

    Parameters
    ----------
    annotator
        The annotator of the viewer the key was pressed in.
    """
    propagation_of(annotator).start()


def commit_shown(annotator: AnnotatorController) -> object:
    """The commit key and button: the propagation when one is shown, else the annotator's preview.

    Parameters
    ----------
    annotator
        The annotator of the viewer.
    """
    propagation = _of.get(annotator)
    if propagation is not None and (propagation.has_result() or propagation.running):
        return propagation.commit()
    return annotator.commit_and_continue()


class PropagationController:
    """Propagate, preview, correct and commit one object through a stack, for one annotator.

    ``run_in_background``: when set (by the dock) it is called with a
    :class:`PropagationRequest` and must run :meth:`job` in a worker, passing each
    yielded plane to :meth:`show_plane` and the result to :meth:`finish` on the main
    thread; when None, :meth:`start` runs it here and now (tests, scripts).
    """

    status_changed = Signal(str)
    state_changed = Signal()  # running / has a result / nothing: the dock updates its buttons

    def __init__(self, annotator: AnnotatorController):
        self.annotator = annotator
        self.viewer = annotator.viewer
        self.run_in_background: Callable[[PropagationRequest], None] | None = None
        self.preview_layer = None
        self.request: PropagationRequest | None = None  # the last one started
        self.result: PropagationResult | None = None  # the last one finished (for corrections)
        self.running = False
        self.direction = "both"  # the dock's choice, used by the Propagate key
        self.status_text = ""
        self._stack: np.ndarray | None = None  # (Z, H, W) bool: the object as the preview shows it
        self._scores: np.ndarray | None = None  # (Z,) NaN where not computed or absent
        self._prompt_planes: set[Plane] = set()  # planes whose prompts the commit clears
        self._results: dict[int, PropagationResult] = {}  # id -> result committed (Re-segment corrects it)
        _of[annotator] = self
        annotator.image_changed.connect(self._on_image_changed)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    # ============================================================ state
    def has_result(self) -> bool:
        """Whether a propagation is shown (computed or in progress) and not yet committed or discarded."""
        return self._stack is not None

    def result_of(self, label_id: int) -> PropagationResult | None:
        """The propagation committed as object ``label_id`` here (what Re-segment on it corrects)."""
        return self._results.get(label_id)

    def planes_found(self) -> list[int]:
        """Indices (on the propagation axis) of the planes where the preview shows the object."""
        if self._stack is None:
            return []
        return [int(z) for z in np.flatnonzero(self._stack.reshape(len(self._stack), -1).any(axis=1))]

    def close(self) -> None:
        """Disconnect from the annotator and the viewer (the preview layer is removed)."""
        with contextlib.suppress(TypeError, ValueError):
            self.annotator.image_changed.disconnect(self._on_image_changed)
        with contextlib.suppress(TypeError, ValueError):
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self.discard(quiet=True)
        if _of.get(self.annotator) is self:
            del _of[self.annotator]

    def _on_image_changed(self, layer) -> None:
        self.discard(quiet=True)
        self._results.clear()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if self.preview_layer is not None and (layer is self.preview_layer or layer == self.preview_layer):
            self.preview_layer = None
            self._forget()

    def _set_status(self, text: str) -> None:
        self.status_text = text
        self.status_changed.emit(text)
        self.annotator._set_status(text)  # the annotator's status line says what happens

    # ========================================================== request
    def make_request(self, direction: str | None = None) -> PropagationRequest:
        """What Propagate on the plane shown asks the engine (InputError says what is missing).

        The seed is the object the yellow preview shows (the candidate chosen), with the
        prompts that made it. With a propagation shown (or Re-segment on an object
        propagated here) it is a correction of that result.
        """
        direction = direction or self.direction
        if direction not in DIRECTIONS:
            raise InputError(f"Unknown direction {direction!r}: use one of {', '.join(DIRECTIONS)}.")
        annotator = self.annotator
        if annotator.image_layer is None:
            raise InputError("Choose an image layer first.")
        if annotator.predictor is None:
            raise InputError("Load a model first.")
        if self.running:
            raise InputError("A propagation is running: wait for it or cancel it.")
        image = annotator.image_layer
        plane = annotator.current_plane()
        axis = propagation_axis(self.viewer, image, plane)
        points, labels, boxes = annotator.prompts_on_plane(plane)
        if len(boxes) > 1:
            raise InputError(
                f"Propagate carries one object, but this slice has {len(boxes)} boxes: keep one box (or points)."
            )
        # the preview follows the slice shown (the annotator redraws it on every slider move)
        seed_mask = annotator.preview_mask() > 0 if annotator.preview_info.n_objects == 1 else None
        if seed_mask is None or not seed_mask.any():
            where = annotator.describe(plane)
            if not (len(boxes) or (labels == POSITIVE).any()):
                raise InputError(
                    f"Nothing to propagate on {where}: click the object (or draw a box) on this slice, "
                    "then Propagate carries it through the stack."
                )
            if not annotator.has_embedding(plane):
                raise InputError(
                    f"The embedding of {where} is still being computed: wait for the yellow preview, then Propagate."
                )
            raise InputError(f"The preview on {where} is empty: add points or draw a box around the object first.")
        if annotator.preview_info.candidate == 0:
            seed_mask = None  # SAM's best answer to the prompts, which the engine finds again with its logits
        previous = self._previous_for(image, axis, plane)
        volume, volume_axis = stack_view(image, plane, axis)
        options = {
            "intensity_range": annotator.intensity_range(),
            "spacing": tuple(float(abs(s)) for s in np.asarray(image.scale)[[axis, *plane.axes]]),
        }
        return PropagationRequest(
            image=image,
            plane=plane,
            axis=axis,
            volume=volume,
            volume_axis=volume_axis,
            seed_mask=seed_mask,
            points=points if len(points) else None,
            labels=labels if len(points) else None,
            box=boxes[0] if len(boxes) else None,
            direction=direction,
            previous=previous,
            options=options,
        )

    def _previous_for(self, image, axis: int, plane: Plane):
        """The result this request corrects: the one shown, or the re-segmented object's (None: a new object)."""
        candidate = None
        if self.has_result() and self.result is not None:
            candidate = self.result
        elif self.annotator.resegment_id is not None:
            candidate = self._results.get(self.annotator.resegment_id)
        if candidate is None or self.request is None:
            return None
        same_stack = self.request.image is image and self.request.axis == axis and all(
            plane.index_map[a] == i for a, i in self.request.plane.index if a != axis
        )
        return candidate if same_stack else None

    # =============================================================== run
    def start(self, direction: str | None = None) -> None:
        """Propagate from the plane shown: in the background when the dock set ``run_in_background``."""
        self.run(self.make_request(direction))

    def run(self, request: PropagationRequest) -> None:
        """Run ``request`` (from :meth:`make_request`, its options adjusted if need be, e.g. ``z_range``).

        In the background when the dock set ``run_in_background``, else here and now.
        """
        self.begin(request)
        if self.run_in_background is not None:
            self.run_in_background(request)
            return
        planes = self.job(request)()
        try:
            while True:
                try:
                    plane_result = next(planes)
                except StopIteration as stop:  # the generator's return value is the engine's result
                    result = stop.value
                    break
                self.show_plane(plane_result)
        except BaseException:
            self.stopped()
            raise
        self.finish(result)

    def job(self, request: PropagationRequest) -> Callable[[], Iterator[PlaneResult]]:
        """A generator function (for a worker thread) that yields each plane the engine computes.

        It uses its own shallow copy of the predictor (the annotator keeps decoding
        prompts on the main thread meanwhile) and changes no layer; its return value
        is the engine's result. A request with ``boxes`` runs the engine's 3D box
        (:func:`~napari_sam.engine.predict.box_range.iter_box_range`).
        """
        import copy

        from napari_sam.engine import iter_propagation
        from napari_sam.engine.predict.box_range import iter_box_range

        predictor = copy.copy(self.annotator.predictor)  # its own current embedding, the same model
        # a 3D image: planes embedded for clicks serve the propagation, and the other way round
        cache = self.annotator.cache() if request.shares_embeddings() else None

        def run_box_range():
            return (yield from iter_box_range(
                predictor, request.volume, request.boxes, request.options["z_range"], axis=request.volume_axis,
                seed_plane=request.seed, intensity_range=request.options.get("intensity_range"),
                spacing=request.options.get("spacing"), cache=cache,
            ))

        if request.boxes is not None:
            return run_box_range

        def run():
            generator = iter_propagation(
                predictor,
                request.volume,
                request.seed,
                points=request.points,
                labels=request.labels,
                box=request.box,
                seed_mask=request.seed_mask,
                axis=request.volume_axis,
                direction=request.direction,
                previous=request.previous,
                cache=cache,
                **request.options,
            )
            result = yield from generator
            return result

        return run

    def begin(self, request: PropagationRequest) -> None:
        """Prepare the preview for ``request`` (main thread): a correction keeps the planes shown."""
        correction = request.previous is not None
        if not correction or self._stack is None:
            self._stack = np.zeros(
                (request.n_planes, *plane_ops.plane_shape(request.image, request.plane)), dtype=bool
            )
            self._scores = np.full(request.n_planes, np.nan)
            if request.previous is not None:  # Re-segment of a committed object: start from its planes
                self._stack[...] = self._as_stack(request.previous.mask, request)
            self._prompt_planes = set()
        self.request = request
        self._prompt_planes.add(request.plane)
        self.running = True
        self._ensure_preview_layer(request)
        self._refresh_preview()
        verb = "Correcting from" if correction else "Propagating from"
        self._set_status(f"{verb} {self.annotator.describe(request.plane)} ({DIRECTIONS[request.direction]})...")
        self.state_changed.emit()

    def show_plane(self, plane_result: PlaneResult) -> None:
        """Show one plane the engine computed (main thread)."""
        if self._stack is None:
            return
        z = int(plane_result.plane)
        mask = np.asarray(plane_result.mask, dtype=bool)
        self._stack[z] = mask
        self._scores[z] = float(plane_result.score)
        self._write_preview_plane(z)
        where = self.annotator.describe(plane_at(self.request.plane, self.request.axis, z))
        found = len(self.planes_found())
        plural = "s" if found != 1 else ""
        self._set_status(f"Propagating: {where} done; the object is on {found} slice{plural} so far.")

    def finish(self, result: PropagationResult) -> None:
        """The engine's result (main thread): the preview shows exactly it."""
        self.running = False
        if result is not None and self._stack is not None:
            self.result = result
            self._stack[...] = self._as_stack(result.mask, self.request)
            self._scores = np.asarray(result.scores, dtype=float).copy()
            self._refresh_preview()
        found = self.planes_found()
        if not found:
            self._set_status("The object was not found on any slice; nothing to commit.")
        else:
            self._set_status(
                f"The object spans {len(found)} slice{'s' if len(found) != 1 else ''} ({self._span_text(found)}). "
                "Commit writes it; new prompts on a slice and Propagate correct it from there."
            )
        self.state_changed.emit()

    def stopped(self, cancelled: bool = False) -> None:
        """The job ended without a result (cancelled or failed): the planes shown so far stay, to commit or discard."""
        self.running = False
        found = self.planes_found()
        if cancelled and found:
            self._set_status(
                f"Cancelled: the preview holds {len(found)} slice{'s' if len(found) != 1 else ''}; "
                "Commit writes them, Discard drops them."
            )
        elif cancelled:
            self.discard(quiet=True)
            self._set_status("Propagation cancelled.")
        self.state_changed.emit()

    @staticmethod
    def _as_stack(mask, request: PropagationRequest) -> np.ndarray:
        """The engine's mask (the volume's shape) as (Z, H, W): Z the propagation axis."""
        return np.moveaxis(np.asarray(mask, dtype=bool), request.volume_axis, 0)

    def _span_text(self, found: list[int]) -> str:
        request = self.request
        first = self.annotator.describe(plane_at(request.plane, request.axis, found[0]))
        last = self.annotator.describe(plane_at(request.plane, request.axis, found[-1])).removeprefix("slice ")
        if len(found) == 1:
            return first
        # 'slice 3 (axis -3)' .. '9 (axis -3)' read 'slice 3 to 9 (axis -3)'; 'slice z=3 to z=9' as is
        suffix = last[last.find(" (") :] if " (" in last else ""
        if suffix and first.endswith(suffix):
            first = first.removesuffix(suffix)
        return f"{first} to {last}"

    # =========================================================== preview
    def _ensure_preview_layer(self, request: PropagationRequest) -> None:
        shape = self._preview_shape(request)
        layer = self.preview_layer
        if layer is not None and layer in self.viewer.layers and tuple(layer.data.shape) == shape:
            layer.translate = self._preview_transform(request)["translate"]
            return
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        self.preview_layer = self.viewer.add_labels(
            np.zeros(shape, dtype=np.uint8),
            name=PREVIEW_NAME,
            opacity=0.5,
            colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"}),
            metadata={ROLE: PREVIEW_ROLE},
            **self._preview_transform(request),
        )
        self.annotator.activate_points()  # the new layer took the selection: clicks add points again

    @staticmethod
    def _preview_shape(request: PropagationRequest) -> tuple[int, ...]:
        """The stack's shape on the layer's axes: full on the propagation and plane axes, 1 elsewhere."""
        shape = plane_ops.spatial_shape(request.image)
        kept = (request.axis, *request.plane.axes)
        return tuple(size if a in kept else 1 for a, size in enumerate(shape))

    @staticmethod
    def _preview_transform(request: PropagationRequest) -> dict:
        return plane_ops.one_plane_transform(request.image, plane_at(request.plane, request.axis, 0))

    def _layer_selector(self, z: int) -> tuple:
        request = self.request
        return tuple(
            z if a == request.axis else slice(None) if a in request.plane.axes else 0
            for a in range(request.image.ndim)
        )

    def _write_preview_plane(self, z: int) -> None:
        layer = self.preview_layer
        if layer is None:
            return
        layer.data[self._layer_selector(z)] = self._stack[z]  # in place + refresh: no new scene extent
        layer.refresh()

    def _refresh_preview(self) -> None:
        layer = self.preview_layer
        if layer is None or self._stack is None:
            return
        for z in range(len(self._stack)):
            layer.data[self._layer_selector(z)] = self._stack[z]
        layer.refresh()

    def discard(self, quiet: bool = False) -> None:
        """Drop the propagation shown (nothing is written)."""
        had = self.has_result()
        self._forget()
        layer, self.preview_layer = self.preview_layer, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
            self.annotator.activate_points()
        if had and not quiet:
            self._set_status("Propagation discarded; nothing was written.")
        self.state_changed.emit()

    def _forget(self) -> None:
        self._stack = None
        self._scores = None
        self.result = None
        self._prompt_planes = set()

    # ============================================================ commit
    def commit(self) -> int | None:
        """Write the object shown into the labels layer: one id, every plane it reaches, ONE undo step.

        A new object gets the next free id; after Re-segment on an object, that object is
        replaced (its old pixels in the stack become background). Without "paint over"
        only unlabelled pixels are written. The prompts that made it are cleared.
        Returns the id written (None when nothing was).
        """
        if self.running:
            raise InputError("The propagation is still running: wait for it or cancel it, then commit.")
        found = self.planes_found()
        if not found:
            self._set_status("Nothing to commit: propagate an object first.")
            return None
        annotator = self.annotator
        labels = annotator.ensure_labels_layer()
        label_id = annotator.resegment_id
        if label_id is None:
            label_id = label_ops.next_free_label(labels.data)
            if label_id > np.iinfo(labels.data.dtype).max:
                raise InputError(f"The labels layer '{labels.name}' ({labels.data.dtype}) has no free ids left.")
        replacing = annotator.resegment_id is not None
        planes = range(len(self._stack)) if replacing else found
        masks = ((plane_at(self.request.plane, self.request.axis, z), self._stack[z]) for z in planes)
        index, values = pixels_to_write(labels, masks, label_id, annotator.paint_over, replacing)
        if values.size:
            with labels.block_history():  # ONE undo step for every plane
                labels.data_setitem(index, values.astype(labels.data.dtype))
        score = float(np.nanmean(self._scores[found])) if np.isfinite(self._scores[found]).any() else float("nan")
        span = self._span_text(found)
        annotator.record_object(labels, label_id, score, span, same_object=replacing)
        if self.result is not None:
            self._results[label_id] = self.result
        annotator.resegment_id = None
        prompt_planes = set(self._prompt_planes)
        self.discard(quiet=True)
        clear_prompts(annotator, prompt_planes)
        annotator.refresh_objects()
        annotator.activate_points()
        if not values.size:
            self._set_status("The object covers only existing labels; nothing written (enable 'paint over').")
            return None
        verb = "Replaced object" if replacing else "Committed object"
        self._set_status(f"{verb} {label_id} on {len(found)} slices ({span}); one Ctrl+Z undoes it.")
        return label_id
