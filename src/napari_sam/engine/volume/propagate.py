"""Carrying one object through a volume or a time series: ``propagate_object``.

From a seed plane (a mask, or prompts segmented there), each next plane along ``axis`` is
prompted from the previous plane's result (the recipe and its stopping rules are in
:mod:`napari_sam.engine.volume.recipe`), in one or both directions, until the object ends,
the volume ends or ``z_range`` ends. :func:`iter_propagation` yields each plane as it is
computed (the seed first, then alternating outward in "both"), so a viewer can show it
and cancel by closing the generator; its return value is the
:class:`PropagationResult`. Planes are read one at a time; embeddings come from a
:class:`~napari_sam.engine.volume.stack_embeddings.StackEmbeddings` (``cache``), so a
re-propagation after a correction encodes nothing again.

Frames: points (N, 2) are (row, col) and boxes (min_row, min_col, max_row, max_col) in the
seed plane's pixels, as in ``Predictor.predict``; a plane is the 2D image of the two spatial
axes other than ``axis``, in the volume's order.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.volume.recipe import (
    PropagationOptions,
    bounding_box,
    choose_candidate,
    connected_to,
    grown,
    interior_point,
    iou,
    largest_component,
)
from napari_sam.engine.volume.stack_embeddings import range_of, stack_embeddings
from napari_sam.engine.volume.volumes import VolumeView, check_plane, volume_view

DIRECTIONS = ("both", "forward", "backward")
"""``forward``: increasing plane index; ``backward``: decreasing; ``both``: both from the seed."""

_SEED_LOGIT = 10.0  # magnitude of the logits made from a given seed mask (SAM's own are of this order)


@dataclass(frozen=True)
class PlaneResult:
    """One plane of a propagation: its index, the object's mask there and SAM's score.

    ``mask``: (rows, cols) bool; ``score``: SAM's predicted IoU, 1.0 for a given seed mask,
    NaN where the object is absent (then ``mask`` is all False).
    """

    plane: int
    mask: np.ndarray
    score: float

    @property
    def present(self) -> bool:
        """Whether the object was found in this plane."""
        return bool(np.isfinite(self.score))


@dataclass
class PropagationResult:
    """The object in every plane it reaches.

    ``mask``: the volume's spatial shape, bool; ``scores``: (n_planes,) float, NaN where the
    object is absent; ``seed_plane`` and ``axis`` as propagated; ``extras``: ``spacing``, the
    ``recipe`` used and the ``embeddings`` (a ``StackEmbeddings``: pass it as ``cache=`` to a
    re-propagation so no plane is encoded again).
    """

    mask: np.ndarray
    scores: np.ndarray
    seed_plane: int
    axis: int
    extras: dict = field(default_factory=dict)

    @property
    def planes(self) -> np.ndarray:
        """Indices of the planes where the object is present, increasing."""
        return np.flatnonzero(np.isfinite(self.scores))

    def plane_mask(self, plane: int) -> np.ndarray:
        """The (rows, cols) mask of ``plane`` (a view into ``mask``).

        Parameters
        ----------
        plane
            Index along ``axis``.

        Returns
        -------
        np.ndarray
            bool (rows, cols).
        """
        return self.mask[(slice(None),) * self.axis + (int(plane),)]


@dataclass
class _Track:
    """What the next plane in one direction is prompted from."""

    mask: np.ndarray  # last accepted mask
    logits: np.ndarray  # its low-res logits (1, L, L)
    plane: int
    step: int
    missed: list[int] = field(default_factory=list)  # planes skipped since the last accepted one
    done: bool = False


def iter_propagation(
    predictor: Any,
    volume: Any,
    seed_plane: int,
    *,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    seed_mask: Any = None,
    axis: int = 0,
    direction: str = "both",
    z_range: tuple[int, int] | None = None,
    previous: PropagationResult | None = None,
    intensity_range: tuple | None = None,
    spacing: Any = None,
    cache: Any = None,
    **options: Any,
) -> Generator[PlaneResult, None, PropagationResult]:
    """Propagate one object from ``seed_plane``, yielding each plane as it is computed.

    Parameters
    ----------
    predictor
        A :class:`~napari_sam.engine.Predictor` (or one following its protocol).
    volume
        (Z, Y, X) or (Z, Y, X, C<=4): numpy, dask, zarr, memory-mapped TIFF, any dtype.
    seed_plane
        Index along ``axis`` of the plane the prompts (or ``seed_mask``) belong to.
    points, labels
        (N, 2) (row, col) in the seed plane and (N,) 1 positive / 0 negative.
    box
        (4,) (min_row, min_col, max_row, max_col) in the seed plane.
    seed_mask
        (rows, cols) bool: the object in the seed plane, used as is (prompts are then ignored).
    axis
        The spatial axis to propagate along (0 for Z of (Z, Y, X) or T of (T, Y, X)).
    direction
        ``"both"``, ``"forward"`` (increasing index) or ``"backward"``.
    z_range
        (first, last) plane indices, inclusive: propagation never leaves them (a 3D box is
        ``box`` + ``z_range``); None: the whole volume.
    previous
        A result to correct: the planes on the far side of ``seed_plane`` from ``previous``'s
        seed are kept from it (the side the correction does not touch); the seed plane and the
        planes beyond it, away from the original seed, are recomputed. With ``seed_plane``
        equal to the original seed everything is recomputed.
    intensity_range
        (low, high) mapped to 0-255 in every plane (e.g. a CT window); default one range
        sampled from the whole volume.
    spacing
        Physical size of a voxel along the three spatial axes (default 1, 1, 1), recorded in
        the result's ``extras`` for measuring the object; the recipe's rules compare a plane
        with the previous one in pixels, so they need no spacing.
    cache
        Embeddings: None (computed for this call), a
        :class:`~napari_sam.engine.volume.stack_embeddings.StackEmbeddings`, an
        :class:`~napari_sam.engine.EmbeddingCache` or a zarr folder path (see
        :func:`~napari_sam.engine.volume.stack_embeddings.stack_embeddings`).
    **options
        Recipe settings, see :class:`~napari_sam.engine.volume.recipe.PropagationOptions`.

    Yields
    ------
    PlaneResult
        The seed plane first, then each computed plane; absent planes where the object ends.

    Returns
    -------
    PropagationResult
        The whole result (``StopIteration.value``), also with the planes kept from ``previous``.

    Raises
    ------
    InputError
        Not a volume, an axis that does not exist, a seed plane out of range (or outside
        ``z_range``), no prompt, an empty or misshapen seed mask, NaN in a plane read, an
        unknown option; all checked before anything is computed except NaN in a later plane.
    """
    recipe = PropagationOptions.from_options(options)
    view = volume_view(volume, axis, range_of(cache, intensity_range))
    seed_plane = check_plane(seed_plane, view.n_planes, view.axis)
    first, last = _checked_range(z_range, view, seed_plane)
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    seed_mask = _checked_seed_mask(seed_mask, view, points, labels, box)
    _check_previous(previous, view)
    spacing = _checked_spacing(spacing)
    embeddings = stack_embeddings(predictor, view, cache)

    mask = np.zeros(view.shape, dtype=bool)
    scores = np.full(view.n_planes, np.nan)
    directions = _directions(direction, previous, seed_plane)
    if previous is not None:
        _keep_previous(previous, mask, scores, view, seed_plane)
    result = PropagationResult(mask, scores, seed_plane, view.axis,
                               {"spacing": spacing, "recipe": recipe, "embeddings": embeddings})

    if hasattr(getattr(predictor, "model", None), "memory_attention"):  # SAM 2: its memory
        from napari_sam.engine.volume.sam2_memory import (
            Sam2MemoryTracker,
            iter_memory_propagation,
        )

        tracker = previous.extras.get("sam2_memory") if previous is not None else None
        result.extras["sam2_memory"] = tracker = tracker or Sam2MemoryTracker(predictor.model, view.n_planes)
        steps = tuple(directions)
        for plane_result in iter_memory_propagation(
            predictor, embeddings, view.n_planes, seed_plane, points, labels, box, steps, (first, last), tracker,
            seed_mask=seed_mask,
        ):
            _store(result, view, plane_result)
            yield plane_result
        return result

    seed = _segment_seed(predictor, embeddings, seed_plane, seed_mask, points, labels, box)
    seed_result = PlaneResult(seed.plane, seed.mask, seed.score)
    _store(result, view, seed_result)
    yield seed_result
    if not seed_result.present:
        return result
    logits = _seed_low_res(predictor, embeddings, seed_plane, seed)
    tracks = [_Track(seed.mask, logits, seed_plane, step) for step in directions]
    bounds = {1: last, -1: first}
    while not all(t.done for t in tracks):
        for track in tracks:
            if track.done:
                continue
            for plane_result in _advance(predictor, embeddings, view, track, bounds[track.step], recipe):
                _store(result, view, plane_result)
                yield plane_result
    return result


def propagate_object(
    predictor: Any,
    volume: Any,
    seed_plane: int,
    *,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    seed_mask: Any = None,
    axis: int = 0,
    direction: str = "both",
    z_range: tuple[int, int] | None = None,
    **options: Any,
) -> PropagationResult:
    """Propagate one object from ``seed_plane`` through the volume; see :func:`iter_propagation`.

    Parameters
    ----------
    predictor
        A :class:`~napari_sam.engine.Predictor`.
    volume
        (Z, Y, X) or (Z, Y, X, C<=4) array-like.
    seed_plane
        Index along ``axis`` of the plane the prompts belong to.
    points, labels, box, seed_mask, axis, direction, z_range
        The object on the seed plane and where to carry it, as in :func:`iter_propagation`.
    **options
        The other keywords of :func:`iter_propagation` (``previous``, ``intensity_range``,
        ``spacing``, ``cache``) and recipe settings
        (:class:`~napari_sam.engine.volume.recipe.PropagationOptions`), passed on as they are.

    Returns
    -------
    PropagationResult
        ``mask`` (the volume's spatial shape, bool), ``scores`` (n_planes,), NaN where absent.

    Raises
    ------
    InputError
        As :func:`iter_propagation`.
    """
    steps = iter_propagation(
        predictor, volume, seed_plane, points=points, labels=labels, box=box, seed_mask=seed_mask, axis=axis,
        direction=direction, z_range=z_range, **options,
    )
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


# ----------------------------------------------------------------------------- checks


def _checked_range(z_range, view: VolumeView, seed_plane: int) -> tuple[int, int]:
    if z_range is None:
        return 0, view.n_planes - 1
    try:
        first, last = (check_plane(v, view.n_planes, view.axis, "z_range") for v in z_range)
    except TypeError:
        raise InputError(f"z_range must be (first, last) plane indices, got {z_range!r}.") from None
    if first > last:
        first, last = last, first
    if not first <= seed_plane <= last:
        raise InputError(f"seed_plane {seed_plane} lies outside z_range ({first}, {last}).")
    return first, last


def _checked_seed_mask(seed_mask, view: VolumeView, points, labels, box) -> np.ndarray | None:
    if seed_mask is None:
        if points is None and box is None:
            raise InputError("Give the object on the seed plane: points with labels, a box, or a seed_mask.")
        return None
    seed_mask = np.asarray(seed_mask)
    if seed_mask.shape != view.plane_shape:
        raise InputError(
            f"seed_mask has shape {seed_mask.shape}, but a plane along axis {view.axis} has shape {view.plane_shape}."
        )
    seed_mask = seed_mask.astype(bool)
    if not seed_mask.any():
        raise InputError("The seed mask is empty: there is no object on the seed plane to propagate.")
    return seed_mask


def _check_previous(previous, view: VolumeView) -> None:
    if previous is None:
        return
    if not isinstance(previous, PropagationResult):
        raise InputError(f"previous must be a PropagationResult, got {type(previous).__name__}.")
    if previous.mask.shape != view.shape or previous.axis != view.axis:
        raise InputError(
            f"previous was propagated along axis {previous.axis} of a volume of shape {previous.mask.shape}, "
            f"not along axis {view.axis} of shape {view.shape}."
        )


def _checked_spacing(spacing) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = np.asarray(spacing, dtype=np.float64).ravel()
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"spacing must be three positive numbers (one per spatial axis), got {spacing!r}.")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _directions(direction: str, previous: PropagationResult | None, seed_plane: int) -> list[int]:
    """Steps (+1, -1) to propagate in; a correction only goes away from the original seed."""
    wanted = {"both": [1, -1], "forward": [1], "backward": [-1]}[direction]
    if previous is None or seed_plane == previous.seed_plane:
        return wanted
    away = 1 if seed_plane > previous.seed_plane else -1
    return [away] if away in wanted else []


def _keep_previous(previous: PropagationResult, mask, scores, view: VolumeView, seed_plane: int) -> None:
    """Copy the planes of ``previous`` the correction at ``seed_plane`` does not recompute."""
    if seed_plane == previous.seed_plane:
        return
    if seed_plane > previous.seed_plane:
        kept = np.arange(0, seed_plane)
    else:
        kept = np.arange(seed_plane + 1, view.n_planes)
    for plane in kept:
        index = view.index(plane)
        mask[index] = previous.mask[index]
        scores[plane] = previous.scores[plane]


# ----------------------------------------------------------------------------- planes


@dataclass(frozen=True)
class _Seed:
    plane: int
    mask: np.ndarray
    score: float
    logits: np.ndarray | None  # SAM's low-res logits, None for a given mask


def _segment_seed(predictor, embeddings, plane: int, seed_mask, points, labels, box) -> _Seed:
    """The object on the seed plane: the given mask, or SAM's answer to the prompts."""
    if seed_mask is not None:
        return _Seed(plane, seed_mask, 1.0, None)
    predictor.set_embedding(embeddings.get(plane))
    single_click = box is None and points is not None and len(np.asarray(points)) == 1
    masks, scores, logits = predictor.predict(points=points, labels=labels, box=box, multimask=single_click)
    k = int(np.argmax(scores))
    if not masks[k].any():
        return _Seed(plane, masks[k], float("nan"), None)
    return _Seed(plane, masks[k], float(scores[k]), logits[k : k + 1])


def _seed_low_res(predictor, embeddings, plane: int, seed: _Seed) -> np.ndarray:
    """Low-res logits (1, L, L) of the seed: SAM's own, or made from the given mask."""
    if seed.logits is not None:
        return seed.logits
    return mask_to_logits(seed.mask, predictor.config, embeddings.get(plane).input_size)


def mask_to_logits(mask: np.ndarray, config: Any, input_size: tuple[int, int]) -> np.ndarray:
    """A mask as SAM's low-resolution logits (1, L, L), for ``mask_input``.

    The mask is resized into the model's input frame (the image's content occupies
    ``input_size`` of the padded S x S square), then to L x L, and mapped to +-10.

    Parameters
    ----------
    mask
        (H, W) bool in the plane's pixel frame.
    config
        The model's config (``img_size``, ``low_res_mask_size``).
    input_size
        (h, w) of the image inside the model's input (``ImageEmbedding.input_size``).

    Returns
    -------
    np.ndarray
        (1, L, L) float32.
    """
    import torch
    import torch.nn.functional as F

    s, size = int(config.img_size), int(config.low_res_mask_size)
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=tuple(int(v) for v in input_size), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, s - m.shape[-1], 0, s - m.shape[-2]))
    m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
    return ((m[0] * 2 - 1) * _SEED_LOGIT).numpy().astype(np.float32)


def _store(result: PropagationResult, view: VolumeView, plane_result: PlaneResult) -> None:
    index = view.index(plane_result.plane)
    result.mask[index] = plane_result.mask
    result.scores[plane_result.plane] = plane_result.score


def _predict_next(predictor, track: _Track, recipe: PropagationOptions):
    """SAM's candidates for the next plane, prompted from ``track``'s last accepted mask."""
    points = labels = box = mask_input = None
    main = largest_component(track.mask)
    if recipe.prompt_point:
        points, labels = interior_point(main)[None], np.ones(1, dtype=np.int64)
    if recipe.prompt_box:
        box = bounding_box(main, recipe.box_margin)
    if recipe.prompt_mask:
        mask_input = track.logits
    return predictor.predict(points=points, labels=labels, box=box, mask_input=mask_input,
                             multimask=recipe.multimask)


def _advance(predictor, embeddings, view: VolumeView, track: _Track, bound: int,
             recipe: PropagationOptions) -> Iterator[PlaneResult]:
    """Segment the next plane of ``track``; yields it (and gap planes filled or given up)."""
    plane = track.plane + track.step * (len(track.missed) + 1)
    if (plane - bound) * track.step > 0:
        track.done = True
        yield from _give_up(track, view)
        return
    predictor.set_embedding(embeddings.get(plane))
    masks, scores, logits = _predict_next(predictor, track, recipe)
    if recipe.max_shift is not None:
        masks = masks & grown(track.mask, recipe.max_shift)[None]
    if recipe.connected:
        masks = np.stack([connected_to(m, track.mask) for m in masks])
    k = choose_candidate(masks, scores, track.mask) if len(masks) > 1 else 0
    mask, score = masks[k], float(scores[k])
    if _accepted(mask, score, track.mask, recipe):
        for gap in track.missed:  # a thin part missed: its neighbours' overlap
            bridge = mask & track.mask
            yield PlaneResult(gap, bridge, score if bridge.any() else float("nan"))
        track.mask, track.logits, track.plane, track.missed = mask, logits[k : k + 1], plane, []
        yield PlaneResult(plane, mask, score)
        return
    track.missed.append(plane)
    if len(track.missed) > recipe.max_gap:
        track.done = True
        yield from _give_up(track, view)


def _give_up(track: _Track, view: VolumeView) -> Iterator[PlaneResult]:
    """The object ended: the planes tried past its last accepted plane are absent."""
    empty = np.zeros(view.plane_shape, dtype=bool)
    for gap in track.missed:
        yield PlaneResult(gap, empty, float("nan"))
    track.missed = []


def _accepted(mask: np.ndarray, score: float, previous: np.ndarray, recipe: PropagationOptions) -> bool:
    """Whether ``mask`` continues the object (see the recipe's stopping rules)."""
    area = int(mask.sum())
    if area < recipe.min_area or score < recipe.min_score:
        return False
    # an object cut by the border may grow as it comes into view (a movie): no growth limit then
    if area > recipe.max_growth * previous.sum() and not _touches_border(previous):
        return False
    return iou(mask, previous) >= recipe.min_overlap


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
