"""Linking per-plane objects into 3D objects (a z-stack) or tracks (a time series).

The rule, plane by plane along the axis:

* An object of plane k continues an object seen on one of the last ``max_gap + 1`` planes when
  their masks overlap with IoU >= ``min_iou`` (default 0.3; the same pixels in both planes).
* Matching is one-to-one, greedy by IoU (highest first), preferring the most recent plane.
  **Split** (one object above, two below): the piece with the larger IoU keeps the id, the
  other starts a new object. **Merge** (two above, one below): the object below continues the
  one it overlaps more; the other ends there. So an id never covers two objects in one plane
  and two ids never share a plane's object.
* An object unmatched in plane k starts a new id; an id unmatched for more than ``max_gap``
  planes has ended and is never continued (a later object there gets a new id).
* **Minimum extent**, applied once every plane is linked: an object whose extent along the
  axis (last plane - first plane + 1, times ``spacing`` along it, in physical units) is below
  ``min_extent`` is removed (a speck on one plane of a stack is not a 3D object).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Active:
    """An id that may still continue: its last mask (as a pixel index set) and plane."""

    pixels: np.ndarray  # flat indices of its pixels on its last plane
    plane: int


@dataclass
class PlaneLinker:
    """Gives the objects of each plane their 3D ids, in plane order (see the module's rule).

    Parameters
    ----------
    min_iou
        Least IoU for an object to continue one from a previous plane (default in
        ``segment.LinkOptions``, the one source of the linking defaults).
    max_gap
        Planes an object may be missing and still continue.
    next_id
        The first id handed out.
    """

    min_iou: float
    max_gap: int
    next_id: int = 1
    active: dict[int, _Active] = field(default_factory=dict)

    def remember(self, gid: int, pixels: np.ndarray, plane: int) -> None:
        """Record that object ``gid`` was last seen on ``plane`` (e.g. read back from a resumed output).

        Parameters
        ----------
        gid
            Its 3D id.
        pixels
            Flat indices of its pixels on that plane.
        plane
            The plane's index.
        """
        self.active[int(gid)] = _Active(np.asarray(pixels), int(plane))

    def link(self, plane: int, labels: np.ndarray) -> np.ndarray:
        """The plane's labels renumbered to 3D ids.

        Parameters
        ----------
        plane
            The plane's index (increasing from call to call).
        labels
            (rows, cols) int labels of this plane alone (0 background, any positive ids).

        Returns
        -------
        np.ndarray
            (rows, cols) int32: each object with the id of the object it continues, or a new id.
        """
        flat = np.asarray(labels).ravel()
        local_ids, inverse = np.unique(flat, return_inverse=True)
        present = local_ids != 0
        # the ids that ended: unmatched for more than max_gap planes
        for gid in [g for g, a in self.active.items() if plane - a.plane > self.max_gap + 1]:
            del self.active[gid]
        mapping = np.zeros(local_ids.size, dtype=np.int32)
        pairs = self._candidate_pairs(plane, flat, local_ids, inverse)
        taken_local, taken_global = set(), set()
        for _, _, local, gid in sorted(pairs, reverse=True):
            if local in taken_local or gid in taken_global:
                continue
            mapping[local] = gid
            taken_local.add(local)
            taken_global.add(gid)
        for local in np.flatnonzero(present):
            if mapping[local] == 0:
                mapping[local] = self.next_id
                self.next_id += 1
        linked = mapping[inverse].reshape(np.shape(labels))
        order = np.argsort(inverse, kind="stable")  # pixels grouped by object, each group in one slice
        ends = np.cumsum(np.bincount(inverse, minlength=local_ids.size))
        for local in np.flatnonzero(present):
            self.remember(int(mapping[local]), order[ends[local] - (ends[local] - (ends[local - 1] if local else 0)):
                                                      ends[local]], plane)
        return linked

    def _candidate_pairs(self, plane: int, flat: np.ndarray, local_ids: np.ndarray, inverse: np.ndarray):
        """(IoU, recency, local index, global id) for every overlap with IoU >= ``min_iou``."""
        sizes = np.bincount(inverse, minlength=local_ids.size)
        pairs = []
        for gid, active in self.active.items():
            under = inverse[active.pixels]
            counts = np.bincount(under, minlength=local_ids.size)
            counts[local_ids == 0] = 0
            for local in np.flatnonzero(counts):
                inter = counts[local]
                union = sizes[local] + active.pixels.size - inter
                iou = inter / union
                if iou >= self.min_iou:
                    pairs.append((float(iou), -(plane - active.plane), int(local), int(gid)))
        return pairs


def extent_filter(first_plane: dict[int, int], last_plane: dict[int, int], step: float, min_extent: float) -> set[int]:
    """The ids whose extent along the axis, in physical units, is below ``min_extent``.

    Parameters
    ----------
    first_plane, last_plane
        Per id, the first and last plane it occupies.
    step
        Physical distance between planes (``spacing`` along the axis).
    min_extent
        Least extent kept, in the same units: ``(last - first + 1) * step``.

    Returns
    -------
    set of int
        The ids to remove.
    """
    return {gid for gid, first in first_plane.items() if (last_plane[gid] - first + 1) * step < min_extent}
