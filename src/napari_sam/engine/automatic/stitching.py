"""Stitching per-tile label images into one, keeping every object exactly once.

The seam rule
-------------
Every object in the output is copied WHOLE from the segmentation of ONE tile's
window; objects are never cut at seams and never glued from pieces.

1. Candidates. An object of a tile's window is a candidate unless it touches an
   edge of the window that is not an edge of the image (it may be cut off there;
   a neighbouring window, which extends further, sees it whole when it is smaller
   than the halo).
2. Rank. Each candidate gets a rank: first whether it is convex enough (its
   solidity, area / convex-hull area, at least ``convex_enough``,
   ``CONVEX_ENOUGH``), then the larger area (in classes of ``AREA_STEP``, 1.5:
   versions of nearly the same size are not told apart by size), then whether
   its centroid lies in the tile's core, then how far its bounding box stays from the window's inner
   (non-image) edges, i.e. how much context the model had around it, then the
   lower tile index, then the lower label in the tile. Ranks are a total order.
   Why whole-and-convex first: each object is seen whole by several windows, and
   a model does not segment it equally well in all of them. With the tiny test
   model (tile 256, halo 64, 32 points) an object was segmented well (IoU >= 0.5)
   by at least one window 90-93% of the time but by the window owning its centroid
   only 62-73% of the time; most of the misses in the owning window were a PART of
   the object (a piece another window saw whole), some a merge with a neighbour.
   Of two versions of one object the larger is the whole one unless it is a merge,
   and a merge of two objects joined by a narrow neck is not convex, while single
   cells and nuclei are: hence convex first, then larger (merges along a wide front
   stay convex enough, see ``CONVEX_ENOUGH``). Seam objects suffered most from the old
   core-first rank, being larger on average (an object crosses a border more
   likely the larger it is) and larger objects being split more often
   (``benchmarks/bench_seams.py`` measures it border by border).
3. Duplicates. Two candidates from different tiles are the same object when their
   overlap covers at least ``same_object_overlap`` (``SAME_OBJECT_OVERLAP``, 0.2)
   of the smaller one. Distinct touching objects share only boundary pixels, far
   below that; two windows' versions of one object, or two pieces of it, share
   more. (With the tiny test model on 2048^2 pixels, 0.5 left seam objects split
   into two labels 23-26% of the time against 16-17% for interior ones; 0.2 brought
   that to 19-19.5% against 15%, with the same F1.) A candidate is dropped when a same-object candidate from another tile
   outranks it. Because ranks are a total order, of all the versions of one
   object the best-ranked one survives: exactly one copy, from the tile that saw
   it best, never zero (the best one is outranked by nobody).
4. Painting. Surviving candidates are painted tile by tile in tile-index order
   (inside a tile, in label order) into pixels that are still background, and
   numbered 1, 2, ... in that order. Where two different but touching objects from
   neighbouring tiles overlap by a few pixels, the earlier tile keeps them.

Every decision depends only on the tiles' label images and the grid, not on the
order in which tiles finish, so a distributed run gives the same labels as a
local one. A tile is painted once all tiles whose windows overlap it have
arrived; its candidates are forgotten once their last neighbour is painted, so
memory holds about one row of tiles' candidates.

Resuming
--------
Tiles are painted in index order, so an interrupted run has painted a prefix: tiles
``0 .. first - 1``, with labels ``1 .. labels_used``. Painting tile ``k`` needs the
candidates of ``k`` and of all its neighbours (rule 3), painted ones included, and
the pixels painted before (rule 4), which the output holds. A resumed stitcher
(``first_tile=first``, ``label_offset=labels_used``) therefore gets the label images
of the unpainted tiles AND of the painted tiles that neighbour one of them
(:func:`tiles_to_resume`); it uses the latter only to outrank duplicates and never
paints them again. The result equals the uninterrupted run's exactly (given the
same per-tile segmentations). With a halo smaller than the core that re-runs the
``cols + 1`` painted tiles before ``first`` (one grid row and one tile): on a 10 x 10
grid interrupted after 55 painted tiles, 45 + 11 = 56 of 100 tiles run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.engine.automatic.tiling import Box, Tile, TileGrid

SAME_OBJECT_OVERLAP = 0.2
"""Overlap, as a fraction of the smaller candidate, from which two tiles' candidates are one object."""

CONVEX_ENOUGH = 0.8
"""Solidity (area / convex-hull area) from which a candidate counts as one whole object in the rank
(rule 2): single ellipses and the wobbly blobs of the synthetic data lie above it, two objects joined
by a narrow neck below. Two round objects touching along a wide front are NOT caught (two touching
equal discs: 0.88), so such a merge still outranks the two objects; measured on the tiny model's
tiles, merges were rarer than parts (4 against 20 of the owner-window misses), and 0.8 found more
objects than 0.85 or 0.9 (``benchmarks/bench_seams.py``). Both settings were chosen on images of
seeds 500 and 501 (seams 0.60 -> 0.72, interior 0.70 -> 0.73); on the held-out seed 502 the gain was
small (seams 0.55 -> 0.58, interior 0.66 unchanged), so treat the size of the gain as uncertain."""


AREA_STEP = 1.5
"""Areas are compared in classes of this ratio (rule 2): a clearly larger version (a whole object
against its part) wins; versions within about this ratio are decided by core and context."""


def area_class(area: int, step: float = AREA_STEP) -> int:
    """``floor(log(area) / log(step))``: the class of an area in rule 2's rank (larger areas, higher classes).

    Parameters
    ----------
    area
        Pixels, >= 1.
    step
        Ratio between consecutive classes, > 1.

    Returns
    -------
    int
        The class.
    """
    return int(np.floor(np.log(max(int(area), 1)) / np.log(step)))


def solidity(mask: np.ndarray) -> float:
    """Area of a mask over the area of its convex hull (1.0 for a convex mask; pixel-corner hull).

    Parameters
    ----------
    mask
        (h, w) bool, not empty.

    Returns
    -------
    float
        In (0, 1]; 1.0 for masks of fewer than 3 pixels.
    """
    from skimage.morphology import convex_hull_image

    area = int(np.count_nonzero(mask))
    if area < 3:
        return 1.0
    hull = int(np.count_nonzero(convex_hull_image(mask)))
    return min(1.0, area / max(hull, 1))


@dataclass
class Candidate:
    """One object of one tile in full-image coordinates.

    ``box`` (row0, row1, col0, col1) half-open; ``mask`` bool of the box's shape;
    ``rank`` sorts best first (smaller is better).
    """

    tile_index: int
    label: int
    box: Box
    mask: np.ndarray
    area: int
    rank: tuple


def tile_candidates(
    tile: Tile, labels: np.ndarray, image_shape: tuple[int, int], convex_enough: float | None = CONVEX_ENOUGH
) -> list[Candidate]:
    """Candidates (rule 1 and 2) from a tile's (H_w, W_w) label image in the window's frame.

    Parameters
    ----------
    tile
        The tile the labels belong to.
    labels
        (H_w, W_w) int labels of ``tile.window``, 0 the background.
    image_shape
        (H, W) of the full image: window edges on its border do not disqualify objects.
    convex_enough
        Solidity from which a candidate ranks as whole (rule 2); None ranks by core and
        context only (the rule before whole-and-convex first, kept for comparison).

    Returns
    -------
    list of Candidate
        In label order, in full-image coordinates, each with its rank.
    """
    from scipy import ndimage

    if labels.max() == 0:
        return []
    wr0, wr1, wc0, wc1 = tile.window
    h, w = image_shape
    # inner window edges (those not on the image border) as distances; the image border counts as far away
    inner_top, inner_bottom = wr0 > 0, wr1 < h
    inner_left, inner_right = wc0 > 0, wc1 < w
    far = float(max(h, w))
    cr0, cr1, cc0, cc1 = tile.core
    candidates = []
    for label, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None:
            continue
        r0, r1 = slices[0].start, slices[0].stop
        c0, c1 = slices[1].start, slices[1].stop
        mask = labels[r0:r1, c0:c1] == label
        area = int(mask.sum())
        if area == 0:
            continue
        window_h, window_w = labels.shape
        if (inner_top and r0 == 0) or (inner_bottom and r1 == window_h) or (inner_left and c0 == 0) or (
            inner_right and c1 == window_w
        ):
            continue
        rows, cols = np.nonzero(mask)
        centroid_row = wr0 + r0 + rows.mean()
        centroid_col = wc0 + c0 + cols.mean()
        in_core = cr0 <= centroid_row < cr1 and cc0 <= centroid_col < cc1
        context = min(
            r0 if inner_top else far,
            window_h - r1 if inner_bottom else far,
            c0 if inner_left else far,
            window_w - c1 if inner_right else far,
        )
        rank = (0 if in_core else 1, -context, tile.index, label)
        if convex_enough is not None:
            rank = (0 if solidity(mask) >= convex_enough else 1, -area_class(area), *rank)
        candidates.append(Candidate(tile.index, label, (wr0 + r0, wr0 + r1, wc0 + c0, wc0 + c1), mask, area, rank))
    return candidates


def overlap_area(a: Candidate, b: Candidate) -> int:
    """Pixels shared by two candidates' masks.

    Parameters
    ----------
    a, b
        Candidates in full-image coordinates.

    Returns
    -------
    int
        The number of pixels in both masks.
    """
    r0, r1 = max(a.box[0], b.box[0]), min(a.box[1], b.box[1])
    c0, c1 = max(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if r0 >= r1 or c0 >= c1:
        return 0
    in_a = a.mask[r0 - a.box[0] : r1 - a.box[0], c0 - a.box[2] : c1 - a.box[2]]
    in_b = b.mask[r0 - b.box[0] : r1 - b.box[0], c0 - b.box[2] : c1 - b.box[2]]
    return int(np.count_nonzero(in_a & in_b))


def surviving_candidates(
    mine: list[Candidate], others: list[Candidate], same_object_overlap: float = SAME_OBJECT_OVERLAP
) -> list[Candidate]:
    """Rule 3: the candidates of one tile that no same-object candidate of another tile outranks.

    Parameters
    ----------
    mine
        The candidates of one tile.
    others
        The candidates of the tiles whose windows overlap it.
    same_object_overlap
        Overlap, as a fraction of the smaller of two candidates, from which they are one object.

    Returns
    -------
    list of Candidate
        The kept candidates of ``mine``, in their order.
    """
    if not others:
        return list(mine)
    other_boxes = np.array([o.box for o in others])
    kept = []
    for cand in mine:
        hits = np.nonzero(
            (other_boxes[:, 0] < cand.box[1])
            & (cand.box[0] < other_boxes[:, 1])
            & (other_boxes[:, 2] < cand.box[3])
            & (cand.box[2] < other_boxes[:, 3])
        )[0]
        beaten = False
        for k in hits:
            other = others[k]
            if other.rank >= cand.rank:
                continue
            if overlap_area(cand, other) >= same_object_overlap * min(cand.area, other.area):
                beaten = True
                break
        if not beaten:
            kept.append(cand)
    return kept


def tiles_to_resume(grid: TileGrid, first_tile: int) -> list[Tile]:
    """The tiles a run resumed at ``first_tile`` must segment: the unpainted ones (index >=
    ``first_tile``) and the painted ones whose candidates they need (their neighbours), in index order.

    Parameters
    ----------
    grid
        The run's tile grid.
    first_tile
        The first tile not yet painted.

    Returns
    -------
    list of Tile
        Sorted by index.
    """
    needed = set(range(first_tile, len(grid)))
    for tile in grid.tiles[first_tile:]:
        needed.update(n.index for n in grid.neighbours(tile))
    return [grid.tiles[i] for i in sorted(needed)]


class Stitcher:
    """Streams tile label images into a global label array following the seam rule.

    ``out`` is any (H, W) integer array supporting slicing assignment (numpy, zarr,
    memory-mapped TIFF), zero-initialised. Call :meth:`add` with each tile's label
    image in any order; tiles are painted in index order as soon as possible.
    ``label_offset`` is added to all labels (for stacks: unique ids across slices).
    ``first_tile``: tiles before it are already painted in ``out`` (a resumed run, see
    "Resuming" above; ``label_offset`` is then the highest label they used); give it the
    tiles of :func:`tiles_to_resume`. ``on_painted(index)`` is called after each tile is painted.
    ``convex_enough``: as in :func:`tile_candidates` (rule 2).
    """

    def __init__(
        self,
        grid: TileGrid,
        out: Any,
        same_object_overlap: float = SAME_OBJECT_OVERLAP,
        label_offset: int = 0,
        on_painted: Callable[[int], None] | None = None,
        first_tile: int = 0,
        convex_enough: float | None = CONVEX_ENOUGH,
    ):
        self.grid = grid
        self.out = out
        self.same_object_overlap = same_object_overlap
        self.convex_enough = convex_enough
        self.next_label = label_offset + 1
        self.on_painted = on_painted
        self._neighbours = {}
        self._candidates: dict[int, list[Candidate]] = {}
        self._arrived: set[int] = set()
        self._painted: set[int] = set(range(first_tile))
        self._next_to_paint = first_tile

    def neighbours(self, index: int) -> list[int]:
        """Indices of the tiles whose windows overlap tile ``index``'s (memoised).

        Parameters
        ----------
        index
            A tile index of the grid.

        Returns
        -------
        list of int
            Row-major, without ``index``.
        """
        if index not in self._neighbours:
            self._neighbours[index] = [t.index for t in self.grid.neighbours(self.grid.tiles[index])]
        return self._neighbours[index]

    def add(self, index: int, labels: np.ndarray) -> None:
        """Hand over tile ``index``'s label image (window frame); paints every tile that became ready.

        Parameters
        ----------
        index
            The tile's index in the grid.
        labels
            (H_w, W_w) int labels of the tile's window, 0 the background.

        Raises
        ------
        ValueError
            ``labels`` does not have the window's shape.
        """
        tile = self.grid.tiles[index]
        if labels.shape != tile.window_shape:
            raise ValueError(f"tile {index}: labels of shape {labels.shape}, window is {tile.window_shape}")
        self._candidates[index] = tile_candidates(tile, labels, self.grid.image_shape, self.convex_enough)
        self._arrived.add(index)
        self._paint_ready()

    @property
    def done(self) -> bool:
        """Every tile of the grid is painted."""
        return self._next_to_paint >= len(self.grid)

    @property
    def labels_used(self) -> int:
        """The highest label written so far."""
        return self.next_label - 1

    def _paint_ready(self) -> None:
        while self._next_to_paint < len(self.grid):
            index = self._next_to_paint
            if index not in self._arrived or not all(n in self._arrived for n in self.neighbours(index)):
                return
            others = [c for n in self.neighbours(index) for c in self._candidates[n]]
            kept = surviving_candidates(self._candidates[index], others, self.same_object_overlap)
            self._paint(kept)
            self._painted.add(index)
            self._next_to_paint += 1
            self._forget_finished(index)
            if self.on_painted is not None:
                self.on_painted(index)

    def _paint(self, kept: list[Candidate]) -> None:
        if not kept:
            return
        r0 = min(c.box[0] for c in kept)
        r1 = max(c.box[1] for c in kept)
        c0 = min(c.box[2] for c in kept)
        c1 = max(c.box[3] for c in kept)
        # one read-modify-write of the region per tile: cheap for numpy, chunk-friendly for zarr
        region = np.array(self.out[r0:r1, c0:c1])
        for cand in kept:  # label order inside the tile: deterministic
            view = region[cand.box[0] - r0 : cand.box[1] - r0, cand.box[2] - c0 : cand.box[3] - c0]
            free = cand.mask & (view == 0)
            if not free.any():
                continue
            view[free] = self.next_label
            self.next_label += 1
        self.out[r0:r1, c0:c1] = region

    def _forget_finished(self, index: int) -> None:
        # a tile's candidates are needed until it and all its neighbours are painted
        for tile_index in [index, *self.neighbours(index)]:
            if tile_index in self._candidates and tile_index in self._painted:
                if all(n in self._painted for n in self.neighbours(tile_index)):
                    del self._candidates[tile_index]


