"""SAM 2's memory, frame by frame: one object carried through the planes of a stack or the frames of a movie.

:class:`Sam2MemoryTracker` keeps, per frame, what SAM 2 remembers of the object there (the
encoded memory of the frame with its mask, the object pointer, the object score) in two
banks: *conditioning* frames (prompted by the user) and *tracked* frames (predicted). A new
frame is segmented from its own features conditioned, by the memory attention, on every
conditioning frame plus the ``num_maskmem - 1`` tracked frames just before it (just after it
when tracking backward), and on the object pointers of the conditioning frames on the near
side and of up to ``max_obj_ptrs_in_encoder - 1`` tracked frames before it. This follows
Meta's ``SAM2Base.track_step`` with the released sam2.1 video settings, and
``tests/engine/test_sam2_memory.py`` checks it against Meta's outputs.

Several objects: one tracker per object (each has its own memory), driven together by
:func:`propagate_objects` / :func:`iter_objects_propagation` as Meta's video predictor drives
several object ids; a given mask conditions a tracker as Meta's ``add_new_mask``
(:meth:`Sam2MemoryTracker.prompt_mask`).

Memory stays bounded for long stacks: tracked frames outside the window the next frame can
use are dropped (:meth:`Sam2MemoryTracker.forget_outside`), and ``storage_device`` (e.g.
``"cpu"``) keeps the banks off the GPU.

Frames are integers (plane indices); prompts are SAM's INPUT frame ``(x, y)`` pixels of the
``img_size`` square, as the model takes them. Features come from
:meth:`napari_sam.model.sam2.Sam2.encode_frame` (not :meth:`~napari_sam.model.sam2.Sam2.encode_image`,
which adds the no-memory embedding of single images).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from napari_sam.model.sam2.image_encoder import sine_position_encoding

_ABSENT_LOGIT = -1024.0  # mask logit where the object score says the object is absent
_LOGIT_LIMIT = 32.0  # a frame's previous logits, fed back with a correction, are clamped to this
# the memory encoder sees a scaled and shifted mask: binary masks from clicks, sigmoid of predicted ones
_MASK_INPUT_AS_OUTPUT_SCALE, _MASK_INPUT_AS_OUTPUT_BIAS = 20.0, -10.0


@dataclass
class FrameState:
    """What the tracker keeps for one frame (batch B = objects tracked together).

    ``low_res_logits`` (B, 1, L, L): the chosen mask's logits; ``iou`` (B,): its predicted IoU;
    ``object_pointer`` (B, C); ``object_score`` (B, 1) logit, > 0 when the object is present;
    ``memory`` / ``memory_pos`` (B, memory_dim, E, E): the encoded memory and its positions.
    """

    low_res_logits: torch.Tensor
    iou: torch.Tensor
    object_pointer: torch.Tensor
    object_score: torch.Tensor
    memory: torch.Tensor
    memory_pos: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        """(B,) bool: the object score says the object is in this frame."""
        return self.object_score[:, 0] > 0


def sine_time_encoding(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``(N,)`` relative times -> ``(N, dim)``: sines of a geometric ladder of frequencies, then cosines.

    Parameters
    ----------
    positions
        Relative times (already normalised by the caller).
    dim
        Output width (even).
    temperature
        Base of the frequency ladder.

    Returns
    -------
    torch.Tensor
        ``(N, dim)`` float32.
    """
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=positions.device)
    phase = positions.float()[:, None] / temperature ** (2 * (steps // 2) / half)
    return torch.cat([phase.sin(), phase.cos()], dim=-1)


class Sam2MemoryTracker:
    """Segments one object (or B objects) frame by frame with SAM 2's memory.

    Parameters
    ----------
    model
        A :class:`~napari_sam.model.sam2.Sam2` in eval mode.
    num_frames
        Frames (planes) in the sequence: bounds the object-pointer window.
    storage_device
        Where the banks are kept (default: the model's device); ``"cpu"`` saves GPU memory.
    """

    def __init__(self, model: torch.nn.Module, num_frames: int, storage_device: str | torch.device | None = None):
        self.model = model
        self.config = model.config
        self.num_frames = int(num_frames)
        self.storage_device = torch.device(storage_device) if storage_device is not None else None
        self.conditioning: dict[int, FrameState] = {}
        self.tracked: dict[int, FrameState] = {}
        # frame -> whether the last pass over it went backward (Meta's frames_tracked_per_obj): a prompt
        # on a frame never passed over is an initial one; a correction looks the way that pass went
        self.passed: dict[int, bool] = {}

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def prompt(
        self,
        frame: int,
        features: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        coords: torch.Tensor,
        labels: torch.Tensor,
    ) -> FrameState:
        """Segment ``frame`` from clicks and keep it as a conditioning frame.

        A frame no propagation has passed over is an initial frame: no memory is used. A frame
        passed over is corrected: the memory of the other frames is used, looking the way the
        last pass over it went (Meta's video predictor with ``add_all_frames_to_correct_as_cond``,
        so that a correction is kept when propagating again). Either way the frame's previous
        logits, if any, are fed back with the clicks.

        Parameters
        ----------
        frame
            The frame's index.
        features
            ``(B, C, E, E)`` from :meth:`~napari_sam.model.sam2.Sam2.encode_frame`.
        high_res
            The two high-resolution features from the same call.
        coords
            ``(B, N, 2)`` clicks, ``(x, y)`` in the model's input frame.
        labels
            ``(B, N)`` 1 positive, 0 negative.

        Returns
        -------
        FrameState
            The frame's result (also stored).
        """
        previous = self.tracked.pop(frame, None) or self.conditioning.pop(frame, None)
        initial = frame not in self.passed
        feedback = None if previous is None else previous.low_res_logits.clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)
        reverse = self.passed.get(frame, False)
        state = self._step(frame, features, high_res, (coords, labels), feedback, initial, reverse=reverse)
        self.conditioning[frame] = self._stored(state)
        return state

    @torch.inference_mode()
    def prompt_mask(
        self, frame: int, features: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> FrameState:
        """Take a given mask as ``frame``'s segmentation and keep it as a conditioning frame.

        As Meta's ``add_new_mask``: the mask itself is the output (logits +-10, IoU 1, present
        where it has a pixel); the decoder, given the mask as its dense prompt on the frame's
        own features (no memory), only makes the object pointer.

        Parameters
        ----------
        frame
            The frame's index.
        features, high_res
            From :meth:`~napari_sam.model.sam2.Sam2.encode_frame`.
        mask
            ``(B, 1, S, S)`` binary mask in the model's input frame (0/1, any dtype).

        Returns
        -------
        FrameState
            The frame's result (also stored).
        """
        self.tracked.pop(frame, None)
        self.conditioning.pop(frame, None)
        model = self.model
        mask = mask.to(features.device).float()
        batch = mask.shape[0]
        high = mask * _MASK_INPUT_AS_OUTPUT_SCALE + _MASK_INPUT_AS_OUTPUT_BIAS
        low_res = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
                                align_corners=False, antialias=True)
        coords = features.new_zeros(batch, 1, 2)  # no click: one padding point
        labels = torch.full((batch, 1), -1, dtype=torch.int64, device=features.device)
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=model.mask_downsample(mask))
        _, _, tokens, decoder_score = model.mask_decoder(
            features, model.prompt_encoder.get_dense_pe(), sparse, dense, False, high_res_features=high_res
        )
        pointer = self._absent_pointer(model.obj_ptr_proj(tokens[:, 0]), (decoder_score > 0).float())
        appearing = mask.flatten(1).amax(dim=1, keepdim=True).gt(0).float()  # (B, 1): the mask decides presence
        pointer = self._absent_pointer(pointer, appearing)
        score = appearing * _MASK_INPUT_AS_OUTPUT_SCALE + _MASK_INPUT_AS_OUTPUT_BIAS
        iou = mask.new_ones(batch)
        state = self._remember(features, low_res.float(), iou, pointer, score, binary=True)
        self.conditioning[frame] = self._stored(state)
        return state

    @torch.inference_mode()
    def track(
        self, frame: int, features: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], reverse: bool = False
    ) -> FrameState:
        """Segment ``frame`` from memory alone and keep it as a tracked frame.

        Parameters
        ----------
        frame
            The frame's index.
        features, high_res
            From :meth:`~napari_sam.model.sam2.Sam2.encode_frame`.
        reverse
            Tracking toward lower indices: the memory window and pointer times look the other way.

        Returns
        -------
        FrameState
            The frame's result (also stored).
        """
        state = self._step(frame, features, high_res, None, None, initial=False, reverse=reverse)
        self.tracked[frame] = self._stored(state)
        self.passed[frame] = reverse
        return state

    def forget_outside(self, frame: int, reverse: bool = False) -> None:
        """Drop tracked frames that no later step can use (bounded memory for long stacks).

        Kept: frames within reach (memory window or pointer window) of the frame after
        ``frame``, and of any conditioning frame (a pass in the other direction, or a
        correction, starts from those).

        Parameters
        ----------
        frame
            The frame just tracked.
        reverse
            Tracking toward lower indices.
        """
        reach = max(self.config.num_maskmem - 1, min(self.num_frames, self.config.max_obj_ptrs_in_encoder) - 1)
        sign = -1 if reverse else 1
        for old in list(self.tracked):
            behind = sign * (frame + sign - old)
            if behind > reach and all(abs(old - start) > reach for start in self.conditioning):
                del self.tracked[old]

    # --------------------------------------------------------------- internals
    def _stored(self, state: FrameState) -> FrameState:
        """The copy the banks keep: memory features in bf16 (half the memory; Meta's video predictor
        keeps them so too), everything on ``storage_device``."""
        kept = FrameState(**vars(state))
        kept.memory = kept.memory.to(torch.bfloat16)
        if self.storage_device is not None:
            kept = FrameState(*(tensor.to(self.storage_device) for tensor in vars(kept).values()))
        return kept

    def _step(self, frame, features, high_res, points, feedback, initial: bool, reverse: bool) -> FrameState:
        conditioned = self._conditioned_features(frame, features, initial, reverse)
        low_res, iou, pointer, score = self._decode(conditioned, high_res, points, feedback, initial)
        return self._remember(features, low_res, iou, pointer, score, binary=points is not None)

    def _absent_pointer(self, pointer: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The object pointer where ``present`` (B, 1) is 1, the learned "no object" pointer where 0."""
        return present * pointer + (1 - present) * self.model.no_obj_ptr

    def _remember(self, features, low_res, iou, pointer, score, binary: bool) -> FrameState:
        """The frame's state with its encoded memory (from the raw frame features and the mask)."""
        model = self.model
        size = self.config.img_size
        high = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        # memory of this frame: prompted masks enter binary, predicted ones as probabilities
        mask = (high > 0).float() if binary else torch.sigmoid(high)
        mask = mask * _MASK_INPUT_AS_OUTPUT_SCALE + _MASK_INPUT_AS_OUTPUT_BIAS
        memory, memory_pos = model.memory_encoder(features, mask)
        absent = 1.0 - (score > 0).float()
        memory = memory + absent[..., None, None] * model.no_obj_embed_spatial[..., None, None]
        return FrameState(low_res, iou, pointer, score, memory, memory_pos)

    def _decode(self, features, high_res, points, feedback, initial: bool):
        """SAM heads on memory-conditioned features: (logits (B,1,L,L), iou (B,), pointer (B,C), score (B,1))."""
        model = self.model
        batch = features.shape[0]
        if points is None:  # no click: one padding point, as the model was trained
            coords = features.new_zeros(batch, 1, 2)
            labels = torch.full((batch, 1), -1, dtype=torch.int64, device=features.device)
            clicks = 0
        else:
            coords, labels = points
            clicks = labels.shape[1]
        # sam2.1 video settings: several candidates for 0 or 1 click, on initial and tracked frames alike
        multimask = clicks <= 1
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=feedback)
        masks, ious, tokens, score = model.mask_decoder(
            features, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask, high_res_features=high_res
        )
        present = score > 0
        masks = torch.where(present[:, None, None], masks, _ABSENT_LOGIT).float()
        rows = torch.arange(batch, device=masks.device)
        best = ious.argmax(dim=-1) if multimask else torch.zeros(batch, dtype=torch.long, device=masks.device)
        pointer = self._absent_pointer(model.obj_ptr_proj(tokens[rows, best if tokens.shape[1] > 1 else 0]),
                                       present.float())
        return masks[rows, best][:, None], ious[rows, best], pointer, score

    def _conditioned_features(self, frame: int, features: torch.Tensor, initial: bool, reverse: bool) -> torch.Tensor:
        """The frame's features after the memory attention (initial frames: plus the no-memory embedding)."""
        model, config = self.model, self.config
        if initial:
            return features + model.no_mem_embed.reshape(1, -1, 1, 1)
        batch, channels, height, width = features.shape
        device = features.device
        sign = -1 if reverse else 1
        slots = config.num_maskmem
        memories, positions = [], []

        def add_memory(state: FrameState, slot: int) -> None:
            memories.append(state.memory.to(device).float().flatten(2).transpose(1, 2))
            positions.append(state.memory_pos.to(device).flatten(2).transpose(1, 2) + model.maskmem_tpos_enc[slot].reshape(1, 1, -1))

        for state in self.conditioning.values():
            add_memory(state, slots - 1)
        for t_pos in range(1, slots):  # the slots - 1 frames just before (after, in reverse) this one
            previous = self.tracked.get(frame - sign * (slots - t_pos))
            if previous is not None:
                add_memory(previous, slots - t_pos - 1)

        max_pointers = min(self.num_frames, config.max_obj_ptrs_in_encoder)
        pointers = [
            (sign * (frame - t), state.object_pointer)
            for t, state in self.conditioning.items()
            if sign * (frame - t) >= 0  # only conditioning frames on the side already passed
        ]
        for distance in range(1, max_pointers):
            t = frame - sign * distance
            if t < 0 or t >= self.num_frames:
                break
            if t in self.tracked:
                pointers.append((distance, self.tracked[t].object_pointer))
        num_pointer_tokens = 0
        if pointers:
            times = torch.tensor([p[0] for p in pointers], dtype=torch.float32, device=device)
            pointer_pos = model.obj_ptr_tpos_proj(sine_time_encoding(times / (max_pointers - 1), channels))
            vectors = torch.stack([p[1].to(device) for p in pointers], dim=1)  # (B, P, C)
            memory_dim = pointer_pos.shape[-1]
            split = channels // memory_dim  # each pointer becomes `split` tokens of the memory width
            memories.append(vectors.reshape(batch, len(pointers) * split, memory_dim))
            positions.append(pointer_pos.repeat_interleave(split, dim=0)[None].expand(batch, -1, -1))
            num_pointer_tokens = len(pointers) * split

        current = features.flatten(2).transpose(1, 2)
        current_pos = sine_position_encoding(channels, (height, width), device).flatten(1).t()[None]
        conditioned = model.memory_attention(
            current, current_pos.expand(batch, -1, -1), torch.cat(memories, 1), torch.cat(positions, 1),
            num_pointer_tokens,
        )
        return conditioned.transpose(1, 2).reshape(batch, channels, height, width)


def _frame_inputs(predictor, embeddings, plane: int):
    """(features without the no-memory embedding, high-res features, the plane's ImageEmbedding) on the device."""
    embedding = embeddings.get(plane)
    device = predictor.device
    no_memory = predictor.model.no_mem_embed.reshape(1, -1, 1, 1)
    features = embedding.features.to(device) - no_memory  # encode_image added it for single images
    return features, tuple(f.to(device) for f in embedding.high_res_features), embedding


def _prompt_tensors(points, labels, box, embedding, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks (row, col) and a box (min_row, min_col, max_row, max_col) -> (1, N, 2) (x, y) input frame + labels.

    The box becomes two corner points (labels 2, 3) placed first, as SAM 2 takes boxes.
    """
    import numpy as np

    height, width = embedding.original_size
    scale = np.array([size / width, size / height])
    coords, kinds = [], []
    if box is not None:
        r0, c0, r1, c1 = np.asarray(box, dtype=np.float64).ravel()
        r0, r1 = np.clip([r0, r1], 0, height - 1)
        c0, c1 = np.clip([c0, c1], 0, width - 1)
        coords += [np.array([c0, r0]) * scale, np.array([c1, r1]) * scale]
        kinds += [2, 3]
    if points is not None and len(points):
        for (row, col), label in zip(np.asarray(points, dtype=np.float64), np.asarray(labels).ravel()):
            coords.append(np.array([col, row]) * scale)
            kinds.append(int(label))
    xy = torch.as_tensor(np.stack(coords)[None], dtype=torch.float32, device=device)
    return xy, torch.as_tensor([kinds], dtype=torch.int64, device=device)


def iter_memory_propagation(
    predictor: Any,
    embeddings: Any,
    num_planes: int,
    seed_plane: int,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    steps: tuple[int, ...] = (1, -1),
    bounds: tuple[int, int] | None = None,
    tracker: Sam2MemoryTracker | None = None,
    seed_mask: Any = None,
) -> Iterator:
    """Propagate one object with SAM 2's memory, as Meta's video predictor does; yields each plane.

    The prompts segment ``seed_plane`` (a first prompt, or a correction when ``tracker`` has
    tracked it), then each direction in ``steps`` runs from the first conditioning plane to its
    bound, as ``SAM2VideoPredictor.propagate_in_video`` does: conditioning planes are given
    back as segmented, the others tracked from memory (a correction also re-tracks the planes
    between the first prompt and itself, since they can now remember it).

    Parameters
    ----------
    predictor
        A :class:`~napari_sam.engine.Predictor` holding a SAM 2 model.
    embeddings
        Per-plane embeddings (``get(plane)`` -> ImageEmbedding), as the volume engine keeps them.
    num_planes
        Planes in the volume.
    seed_plane
        The plane the prompts belong to.
    points, labels, box
        Prompts on ``seed_plane`` in its (row, col) pixels, as for ``Predictor.predict``.
    steps
        Directions: +1 (increasing index), -1, or both in that order.
    bounds
        (first, last) planes, inclusive (default the whole volume).
    tracker
        The tracker of an earlier propagation of this object, to correct it; None starts anew.
    seed_mask
        (rows, cols) bool: the object on ``seed_plane`` given as a mask (Meta's ``add_new_mask``;
        prompts are then ignored); it is the seed plane's result as given, with score 1.

    Yields
    ------
    PlaneResult
        The seed plane first, then each plane computed (``score`` NaN where the object is absent).
    """
    first, last = bounds if bounds is not None else (0, num_planes - 1)
    tracker = tracker or Sam2MemoryTracker(predictor.model, num_planes)
    yield _prompt_plane(predictor, embeddings, tracker, seed_plane, points, labels, box, seed_mask)
    start = min(tracker.conditioning)
    for step in steps:
        end = last if step > 0 else first
        for plane in range(start, end + step, step):
            tracker.passed[plane] = step < 0
            if plane == seed_plane:
                continue  # already given back
            features, high_res, embedding = _frame_inputs(predictor, embeddings, plane)
            if plane in tracker.conditioning:
                state = tracker.conditioning[plane]
            else:
                with predictor.autocast():
                    state = tracker.track(plane, features, high_res, reverse=step < 0)
                tracker.forget_outside(plane, reverse=step < 0)
            yield _plane_result(predictor, plane, state, embedding)


def _plane_result(predictor, plane: int, state: FrameState, embedding, index: int = 0):
    """Object ``index`` of ``state`` as a PlaneResult at the plane's size (empty, score NaN where absent)."""
    import numpy as np

    from napari_sam.engine.volume.propagate import PlaneResult

    if not bool(state.present[index]):
        return PlaneResult(plane, np.zeros(embedding.original_size, dtype=bool), float("nan"))
    with torch.inference_mode():
        mask = predictor.upscale_logits(state.low_res_logits[index : index + 1].float(), embedding)[0, 0] > 0
    return PlaneResult(plane, mask.cpu().numpy(), float(state.iou[index]))


def _mask_input(mask, size: int, device) -> torch.Tensor:
    """(rows, cols) bool -> (1, 1, S, S) binary in the input frame, as Meta's ``add_new_mask`` resizes it."""
    import numpy as np

    tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=device)[None, None]
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        tensor = (tensor >= 0.5).float()
    return tensor


def _prompt_plane(predictor, embeddings, tracker: Sam2MemoryTracker, plane: int, points, labels, box, mask):
    """Segment ``plane`` from clicks / a box, or take ``mask``; the plane becomes a conditioning plane."""
    import numpy as np

    from napari_sam.engine.volume.propagate import PlaneResult

    features, high_res, embedding = _frame_inputs(predictor, embeddings, plane)
    size = predictor.config.img_size
    with predictor.autocast():
        if mask is not None:
            tracker.prompt_mask(plane, features, high_res, _mask_input(mask, size, predictor.device))
            return PlaneResult(plane, np.asarray(mask, dtype=bool), 1.0)  # the given mask, as given
        coords, kinds = _prompt_tensors(points, labels, box, embedding, size, predictor.device)
        state = tracker.prompt(plane, features, high_res, coords, kinds)
    return _plane_result(predictor, plane, state, embedding)


# ----------------------------------------------------------------------------- several objects

_PROMPT_KEYS = frozenset({"plane", "points", "labels", "box", "mask"})


def _checked_object_prompts(prompts: Any, view: Any, previous: Any = None) -> list[dict | None]:
    """The objects' prompts as dicts with every key (None: no new prompt, with ``previous``), checked."""
    from napari_sam.engine.errors import InputError
    from napari_sam.engine.volume.propagate import _checked_seed_mask
    from napari_sam.engine.volume.volumes import check_plane

    if isinstance(prompts, dict) or not hasattr(prompts, "__len__") or len(prompts) == 0:
        raise InputError("prompts must be a list with one dict per object, e.g. [{'plane': 3, 'points': ...}].")
    if previous is not None:
        from napari_sam.engine.volume.propagate import _check_previous

        if isinstance(previous, dict) or not hasattr(previous, "__len__") or len(previous) != len(prompts):
            raise InputError("previous must be the list of results of an earlier run, one per entry of prompts.")
        for result in previous:
            _check_previous(result, view)
            if not isinstance(result.extras.get("sam2_memory"), Sam2MemoryTracker):
                raise InputError("previous holds a result not propagated with SAM 2's memory: propagate anew.")
    checked: list[dict | None] = []
    for index, prompt in enumerate(prompts):
        if prompt is None and previous is not None:
            checked.append(None)  # this object keeps its prompts
            continue
        if not isinstance(prompt, dict) or "plane" not in prompt:
            raise InputError(f"Object {index}: give a dict with 'plane' and 'points'/'labels', 'box' or 'mask'.")
        unknown = set(prompt) - _PROMPT_KEYS
        if unknown:
            raise InputError(f"Object {index}: unknown prompt keys {sorted(unknown)}; use {sorted(_PROMPT_KEYS)}.")
        plane = check_plane(prompt["plane"], view.n_planes, view.axis, f"object {index}'s plane")
        points, labels, box = prompt.get("points"), prompt.get("labels"), prompt.get("box")
        mask = _checked_seed_mask(prompt.get("mask"), view, points, labels, box)
        checked.append({"plane": plane, "points": points, "labels": labels, "box": box, "mask": mask})
    return checked


def iter_objects_propagation(
    predictor: Any,
    volume: Any,
    prompts: Any,
    *,
    axis: int = 0,
    direction: str = "both",
    z_range: tuple[int, int] | None = None,
    intensity_range: tuple | None = None,
    cache: Any = None,
    spacing: Any = None,
    storage_device: str | torch.device | None = None,
    previous: Any = None,
) -> Iterator:
    """Propagate several objects together with SAM 2's memory; yields ``(object, PlaneResult)`` as computed.

    As Meta's ``SAM2VideoPredictor`` with several object ids: every object is segmented on its
    own prompted plane (no memory), then all are tracked plane by plane, forward and then
    backward, from the earliest prompted plane of any object; each object has its own memory
    (its prompted plane conditions it even on planes before that one), and each plane is
    read and encoded once for all objects. Objects may overlap (no exclusivity is imposed).

    Parameters
    ----------
    predictor
        A :class:`~napari_sam.engine.Predictor` holding a SAM 2 model.
    volume
        (Z, Y, X) or (Z, Y, X, C<=4) array-like.
    prompts
        One dict per object: ``plane`` (index along ``axis``) and ``points`` ((N, 2) (row, col))
        with ``labels`` ((N,) 1 / 0), and/or ``box`` ((min_row, min_col, max_row, max_col)),
        or ``mask`` ((rows, cols) bool, Meta's ``add_new_mask``: the plane's result as given).
    axis, direction, z_range, intensity_range, spacing, cache
        As in :func:`~napari_sam.engine.volume.propagate.iter_propagation`.
    storage_device
        Where the trackers keep their memory (``"cpu"`` saves GPU memory); default the model's.
    previous
        The results of an earlier run of these objects, to correct them: ``prompts`` then holds
        one entry per object, None for an object without a new prompt; a prompt on a plane the
        object was tracked on is a correction (Meta's clicks on a tracked frame). All objects are
        then propagated again from the earliest prompted plane of any of them; planes not
        reached keep their earlier result.

    Yields
    ------
    tuple of (int, PlaneResult)
        The object's index in ``prompts`` and one of its planes: the prompted planes first,
        then every plane computed.

    Returns
    -------
    list of PropagationResult
        One per object (``StopIteration.value``); ``seed_plane`` its prompted plane;
        ``extras["sam2_memory"]`` its tracker, so ``propagate_object(..., previous=result)``
        corrects one object.

    Raises
    ------
    InputError
        Not a SAM 2 predictor, a bad volume, axis, direction, z_range or prompt; checked first.
    """
    import numpy as np

    from napari_sam.engine.errors import InputError
    from napari_sam.engine.volume.propagate import (
        DIRECTIONS,
        PropagationResult,
        _checked_range,
        _checked_spacing,
        _store,
    )
    from napari_sam.engine.volume.stack_embeddings import range_of, stack_embeddings
    from napari_sam.engine.volume.volumes import volume_view

    if not hasattr(getattr(predictor, "model", None), "memory_attention"):
        raise InputError("Propagating several objects together needs a SAM 2 model (one with a memory).")
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    view = volume_view(volume, axis, range_of(cache, intensity_range))
    objects = _checked_object_prompts(prompts, view, previous)
    spacing = _checked_spacing(spacing)
    first, last = 0, view.n_planes - 1
    for obj in objects:  # every prompted plane within z_range
        if obj is not None:
            first, last = _checked_range(z_range, view, obj["plane"])
    if previous is not None and z_range is not None and all(obj is None for obj in objects):
        first, last = _checked_range(z_range, view, min(min(r.extras["sam2_memory"].conditioning) for r in previous))
    embeddings = stack_embeddings(predictor, view, cache)

    results = []
    for index, obj in enumerate(objects):
        if previous is None:
            tracker = Sam2MemoryTracker(predictor.model, view.n_planes, storage_device)
            mask, scores = np.zeros(view.shape, dtype=bool), np.full(view.n_planes, np.nan)
        else:  # the earlier run's planes, until recomputed
            tracker, mask, scores = previous[index].extras["sam2_memory"], previous[index].mask.copy(), \
                previous[index].scores.copy()
        seed_plane = obj["plane"] if obj is not None else previous[index].seed_plane
        results.append(PropagationResult(mask, scores, seed_plane, view.axis,
                                         {"spacing": spacing, "embeddings": embeddings,
                                          "sam2_memory": tracker}))
    trackers = [result.extras["sam2_memory"] for result in results]
    for index, (obj, tracker) in enumerate(zip(objects, trackers)):
        if obj is None:
            continue
        plane_result = _prompt_plane(predictor, embeddings, tracker, obj["plane"], obj["points"], obj["labels"],
                                     obj["box"], obj["mask"])
        _store(results[index], view, plane_result)
        yield index, plane_result

    start = min(min(tracker.conditioning) for tracker in trackers)  # Meta: the earliest prompted frame of all
    steps = {"both": (1, -1), "forward": (1,), "backward": (-1,)}[direction]
    for step in steps:
        end = last if step > 0 else first
        for plane in range(start, end + step, step):
            features = high_res = embedding = None
            for index, tracker in enumerate(trackers):
                if plane in tracker.conditioning:
                    tracker.passed[plane] = step < 0
                    continue  # a prompted plane of this object: given back above
                if features is None:  # read and encode the plane once for all objects
                    features, high_res, embedding = _frame_inputs(predictor, embeddings, plane)
                with predictor.autocast():
                    state = tracker.track(plane, features, high_res, reverse=step < 0)
                tracker.forget_outside(plane, reverse=step < 0)
                plane_result = _plane_result(predictor, plane, state, embedding)
                _store(results[index], view, plane_result)
                yield index, plane_result
    return results


def propagate_objects(predictor: Any, volume: Any, prompts: Any, **options: Any) -> list:
    """Propagate several objects together with SAM 2's memory; see :func:`iter_objects_propagation`.

    Parameters
    ----------
    predictor
        A :class:`~napari_sam.engine.Predictor` holding a SAM 2 model.
    volume
        (Z, Y, X) or (Z, Y, X, C<=4) array-like.
    prompts
        One dict per object: ``plane`` and ``points`` + ``labels``, ``box`` or ``mask``, in that
        plane's (row, col) pixels.
    **options
        The keywords of :func:`iter_objects_propagation`, passed on as they are: ``axis``,
        ``direction``, ``z_range``, ``intensity_range``, ``cache``, ``spacing``,
        ``storage_device``, ``previous`` (correct an earlier run).

    Returns
    -------
    list of PropagationResult
        One per object, in the order of ``prompts``: ``mask`` (the volume's spatial shape, bool),
        ``scores`` (n_planes,), NaN where the object is absent.

    Raises
    ------
    InputError
        As :func:`iter_objects_propagation`.
    """
    steps = iter_objects_propagation(predictor, volume, prompts, **options)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
