"""How one plane is prompted from the previous one, which candidate is kept, and when to stop.

The recipe (chosen by measurement on synthetic z-stacks; the numbers are in docs/volumes.md):

1. The next plane is prompted from the previous plane's accepted mask: a positive point at its
   most interior pixel and its low-resolution logits as ``mask_input``. No box: the box of a
   shrinking object's previous plane is too big for it, and SAM fills it (toward the object's
   ends masks grew or jumped to a neighbour; 3D IoU 0.825 with a box, 0.842 without).
2. One answer, not three candidates (``multimask``): with point + mask SAM's single answer was
   as good and 40% faster. With ``multimask`` the kept candidate is the one that overlaps the
   previous mask most (IoU), SAM's score breaking near-ties. Only the pieces of the mask that
   touch the previous mask are kept (``connected``): specks and far leaks go.
3. A plane is accepted when the mask is big enough (``min_area``), SAM is confident enough
   (``min_score``), it overlaps the previous mask (``min_overlap``) and it has not grown too
   much (``max_growth``: sudden growth is a leak into the background or a neighbour).
   Otherwise the object is taken to have ended, after ``max_gap`` planes of grace: a thin part
   missed on one plane is looked for on the next with the last good prompts, and the missed
   plane gets the overlap of its neighbours.

All pixel quantities are in the plane's (row, col) pixel frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from napari_sam.engine.errors import InputError


@dataclass(frozen=True)
class PropagationOptions:
    """Settings of :func:`~napari_sam.engine.volume.propagate.propagate_object` (the one source of defaults)."""

    prompt_mask: bool = True
    """Feed the previous plane's low-resolution logits to SAM as ``mask_input``."""
    prompt_box: bool = False
    """Prompt with the previous mask's bounding box (grown by ``box_margin``); off: a box from a
    shrinking object's previous plane invites SAM to fill it (measured worse, docs/volumes.md)."""
    box_margin: float = 0.1
    """Growth of that box on each side, as a fraction of its size (at least 2 pixels)."""
    prompt_point: bool = True
    """A positive point at the previous mask's most interior pixel."""
    multimask: bool = False
    """Ask SAM for three candidates and keep the one most like the previous mask (off: the single
    answer to point + mask was as good and 40% faster)."""
    connected: bool = True
    """Keep only the pieces of a candidate that overlap the previous mask (drops specks and far leaks)."""
    """Ask SAM for three candidates and keep the one most like the previous mask."""
    max_shift: float | None = None
    """Pixels an object's boundary may move from one plane to the next: a candidate is cut to the
    previous mask grown by this much (None: not cut). Stops a slow drift into a neighbour."""
    min_score: float = 0.5
    """SAM's predicted IoU below this: the object is not there."""
    min_overlap: float = 0.5
    """IoU with the previous plane's mask below this: the mask jumped (to a neighbour, or away)."""
    max_growth: float = 1.3
    """Area more than this times the previous area: a leak, the object is taken to have ended (not
    applied while the previous mask touches the plane's border: an object coming into view grows)."""
    min_area: int = 6
    """Masks smaller than this (pixels) mean the object has ended."""
    max_gap: int = 1
    """Planes in a row the object may be missed (thin parts) before propagation stops."""

    def validate(self) -> None:
        """Check every setting's range.

        Raises
        ------
        InputError
            A setting is out of range; the message names it.
        """
        for name in ("min_score", "min_overlap"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if not float(self.max_growth) >= 1.0:
            raise InputError(f"max_growth must be >= 1, got {self.max_growth}.")
        if not float(self.box_margin) >= 0.0:
            raise InputError(f"box_margin must be >= 0, got {self.box_margin}.")
        if int(self.min_area) < 1 or int(self.max_gap) < 0:
            raise InputError(f"min_area must be >= 1 and max_gap >= 0, got {self.min_area} and {self.max_gap}.")
        if not (self.prompt_mask or self.prompt_box or self.prompt_point):
            raise InputError("At least one of prompt_mask, prompt_box and prompt_point must prompt the next plane.")

    @classmethod
    def from_options(cls, options: dict) -> PropagationOptions:
        """Options from keyword arguments; an unknown name is an ``InputError`` listing the known ones.

        Parameters
        ----------
        options
            Keyword arguments, e.g. ``{"min_score": 0.6}``; a ``PropagationOptions`` under
            the key ``"recipe"`` is the starting point.

        Returns
        -------
        PropagationOptions
            Validated.

        Raises
        ------
        InputError
            An unknown option or a value out of range.
        """
        options = dict(options)
        base = options.pop("recipe", None) or cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"Unknown propagation option(s) {unknown}; known: {sorted(known)}.")
        recipe = cls(**{**asdict(base), **options})
        recipe.validate()
        return recipe


def bounding_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(min_row, min_col, max_row, max_col) of a non-empty mask, grown by ``margin`` of its size per side.

    Parameters
    ----------
    mask
        (H, W) bool, not empty.
    margin
        Fraction of the box's height (width) added above and below (left and right); at
        least 2 pixels when positive. Not clipped (the predictor clips to the image).

    Returns
    -------
    np.ndarray
        (4,) float64.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = np.array([rows[0], cols[0], rows[-1], cols[-1]], dtype=np.float64)
    if margin > 0:
        grow = np.maximum(2.0, margin * (box[2:] - box[:2] + 1))
        box[:2] -= grow
        box[2:] += grow
    return box


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the pixel deepest inside a non-empty mask (largest distance to its border).

    Parameters
    ----------
    mask
        (H, W) bool, not empty.

    Returns
    -------
    np.ndarray
        (2,) float64.
    """
    from scipy.ndimage import distance_transform_edt

    r0, c0, r1, c1 = bounding_box(mask).astype(int)
    crop = np.pad(mask[r0 : r1 + 1, c0 : c1 + 1], 1)  # the image border counts as outside
    depth = distance_transform_edt(crop)
    r, c = np.unravel_index(int(depth.argmax()), depth.shape)
    return np.array([r0 + r - 1, c0 + c - 1], dtype=np.float64)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of ``mask`` (SAM's masks carry specks that would stretch a box).

    Parameters
    ----------
    mask
        (H, W) bool.

    Returns
    -------
    np.ndarray
        (H, W) bool; ``mask`` itself when it has at most one piece.
    """
    from scipy import ndimage

    pieces, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return pieces == sizes.argmax()


def connected_to(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The 8-connected pieces of ``mask`` that overlap ``reference`` (the largest piece if none does).

    Parameters
    ----------
    mask, reference
        (H, W) bool.

    Returns
    -------
    np.ndarray
        (H, W) bool.
    """
    from scipy import ndimage

    pieces, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    touching = np.unique(pieces[reference & mask])
    if touching.size == 0:
        return largest_component(mask)
    return np.isin(pieces, touching)


def grown(mask: np.ndarray, distance: float) -> np.ndarray:
    """``mask`` grown by ``distance`` pixels (Euclidean), computed in its bounding box plus the margin.

    Parameters
    ----------
    mask
        (H, W) bool, not empty.
    distance
        Pixels, >= 0.

    Returns
    -------
    np.ndarray
        (H, W) bool.
    """
    from scipy.ndimage import distance_transform_edt

    h, w = mask.shape
    r0, c0, r1, c1 = bounding_box(mask).astype(int)
    pad = int(np.ceil(distance)) + 1
    r0, c0, r1, c1 = max(0, r0 - pad), max(0, c0 - pad), min(h, r1 + pad + 1), min(w, c1 + pad + 1)
    out = np.zeros_like(mask, dtype=bool)
    out[r0:r1, c0:c1] = distance_transform_edt(~mask[r0:r1, c0:c1]) <= distance
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks (0.0 when both are empty, unlike ``metrics.mask_iou``: nothing is no match).

    Parameters
    ----------
    a, b
        (H, W) bool.

    Returns
    -------
    float
        In [0, 1].
    """
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def choose_candidate(masks: np.ndarray, scores: np.ndarray, previous: np.ndarray) -> int:
    """Index of the candidate most like ``previous``: highest IoU, SAM's score breaking near-ties.

    Parameters
    ----------
    masks
        (K, H, W) bool candidates.
    scores
        (K,) SAM's predicted IoU.
    previous
        (H, W) bool, the previous plane's mask.

    Returns
    -------
    int
        The chosen index.
    """
    overlaps = np.array([iou(m, previous) for m in masks])
    return int(np.argmax(overlaps + 0.1 * np.asarray(scores, dtype=np.float64)))
