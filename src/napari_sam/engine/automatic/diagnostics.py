"""Why automatic segmentation kept what it kept: counts per filter and the score distributions.

Mask generation (``generation``) decodes three masks per prompt point and drops them
filter by filter. A :class:`FilterReport` counts, summed over every tile, how many
masks each filter rejected, and keeps histograms of the predicted IoU (of every
decoded mask) and of the stability score (of the masks that passed the predicted-IoU
and point-inside filters), so a run that finds little can say which threshold was too
strict for this model and suggest a better one (:meth:`FilterReport.suggest`). The
histograms have fixed bins over [0, 1], so reports of tiles (or of Dask workers) add
up exactly (:meth:`FilterReport.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

BINS = 100  # histogram bins over [0, 1]: percentiles to 0.01, the thresholds' step in the GUI
MIN_CHANGE = 0.015  # a suggestion closer than this to the current threshold is not worth a rerun
# the counted filters, in the order generation applies them, with the words describe() uses
STAGES = (
    ("below_iou", "below predicted IoU {iou:.2f}"),
    ("point_outside", "not containing their point"),
    ("below_stability", "below stability {stability:.2f}"),
    ("duplicates", "duplicates (NMS)"),
    ("nested", "nested in others"),
    ("painting", "too small or hidden"),
)


def _zeros() -> np.ndarray:
    return np.zeros(BINS, dtype=np.int64)


@dataclass
class FilterReport:
    """Counts of masks per filter, summed over tiles, and histograms of their scores.

    ``decoded`` masks (three per decoded prompt point) = ``below_iou`` + ``point_outside``
    + ``below_stability`` + ``duplicates`` + ``nested`` + ``painting`` + ``kept``, where
    ``kept`` counts objects per tile, before tiles are stitched (an object on a seam
    counts in both tiles). ``skipped_points`` are points not decoded because they lie
    inside an object a coarser point found. ``iou_hist`` and ``stability_hist`` count
    scores in :data:`BINS` equal bins over [0, 1] (values outside are clipped).
    """

    pred_iou_thresh: float = 0.0
    stability_thresh: float = 0.0
    tiles: int = 0
    skipped_points: int = 0
    decoded: int = 0
    below_iou: int = 0
    point_outside: int = 0
    below_stability: int = 0
    duplicates: int = 0
    nested: int = 0
    painting: int = 0
    kept: int = 0
    iou_hist: np.ndarray = field(default_factory=_zeros)
    """Predicted IoU of every decoded mask."""
    stability_hist: np.ndarray = field(default_factory=_zeros)
    """Stability of the masks that passed the predicted-IoU and point-inside filters."""

    @property
    def rejected(self) -> int:
        """Masks that some filter dropped."""
        return sum(getattr(self, name) for name, _ in STAGES)

    def merge(self, other: FilterReport) -> None:
        """Add ``other``'s counts and histograms to this report (e.g. another tile's).

        Parameters
        ----------
        other
            A report of the same thresholds.
        """
        self.pred_iou_thresh, self.stability_thresh = other.pred_iou_thresh, other.stability_thresh
        for f in fields(self):
            if f.name not in ("pred_iou_thresh", "stability_thresh"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def iou_percentile(self, q: float) -> float | None:
        """The ``q``-th percentile of the decoded masks' predicted IoU; None when none were decoded.

        Parameters
        ----------
        q
            The percentile, 0..100.
        """
        return histogram_percentile(self.iou_hist, q)

    def stability_percentile(self, q: float) -> float | None:
        """The ``q``-th percentile of the stability of the masks that reached that filter (None: none did).

        Parameters
        ----------
        q
            The percentile, 0..100.
        """
        return histogram_percentile(self.stability_hist, q)

    def suggest(self, iou_quantile: float = 75.0, stability_quantile: float = 25.0) -> dict[str, float]:
        """Thresholds that would let more masks through, for the filters that rejected most of them.

        The predicted IoU is relative to this model's scores: the ``iou_quantile``-th
        percentile of the decoded masks' predicted IoU (a model fine-tuned on one kind of
        object often scores its good masks well below SAM's 0.88). The stability threshold
        becomes the ``stability_quantile``-th percentile of the stabilities that filter
        saw. A threshold is only ever lowered, and only suggested when its filter
        rejected more masks than were kept.

        Parameters
        ----------
        iou_quantile, stability_quantile
            Percentiles (0..100) of the score distributions.

        Returns
        -------
        dict
            ``{"pred_iou_thresh": value, "stability_thresh": value}``, either key absent
            when that threshold already keeps enough; values rounded down to 0.01.
        """
        suggestions = {}
        iou = self.iou_percentile(iou_quantile)
        if iou is not None and self.below_iou > self.kept and iou < self.pred_iou_thresh - MIN_CHANGE:
            suggestions["pred_iou_thresh"] = iou
        stability = self.stability_percentile(stability_quantile)
        if stability is not None and self.below_stability > self.kept and stability < self.stability_thresh - MIN_CHANGE:
            suggestions["stability_thresh"] = stability
        return suggestions

    def describe(self, hint: bool = True) -> str:
        """One or two sentences: how many masks were decoded, what each filter rejected, and what to try.

        Parameters
        ----------
        hint
            End with :meth:`hint` (the thresholds to try), when there is one.

        Returns
        -------
        str
            E.g. ``"3072 masks decoded: 2900 below predicted IoU 0.88, 120 below stability 0.95,
            49 duplicates (NMS); 3 kept. Try predicted IoU 0.62."``
        """
        if self.decoded == 0:
            return "No masks decoded (blank image or region)."
        words = {"iou": self.pred_iou_thresh, "stability": self.stability_thresh}
        parts = [
            f"{getattr(self, name)} {text.format(**words)}" for name, text in STAGES if getattr(self, name)
        ]
        kept = f"{self.kept} kept" if self.tiles <= 1 else f"{self.kept} kept in {self.tiles} tiles (overlaps counted twice)"
        sentence = f"{self.decoded} masks decoded: " + ", ".join([*parts, kept]) + "."
        if self.skipped_points:
            sentence += f" {self.skipped_points} points inside found objects skipped."
        advice = self.hint() if hint else ""
        return f"{sentence} {advice}" if advice else sentence

    def hint(self) -> str:
        """The suggestion as a sentence (empty when the thresholds keep enough)."""
        suggestions = self.suggest()
        names = {"pred_iou_thresh": "predicted IoU", "stability_thresh": "stability"}
        tries = [f"{names[key]} {value:.2f}" for key, value in suggestions.items()]
        return f"Try {' and '.join(tries)}." if tries else ""


def histogram_percentile(hist: np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile (0..100) of values counted in equal bins over [0, 1], as a bin's lower edge.

    Parameters
    ----------
    hist
        (B,) counts.
    q
        The percentile.

    Returns
    -------
    float or None
        The lower edge of the bin holding the percentile (so a threshold at it keeps at
        least ``100 - q`` percent of the values); None for an empty histogram.
    """
    total = int(hist.sum())
    if total == 0:
        return None
    rank = q / 100.0 * total
    index = int(np.searchsorted(np.cumsum(hist), rank, side="right"))
    return min(index, len(hist) - 1) / len(hist)


class Tally:
    """A :class:`FilterReport` being filled inside the decoding loop, on the model's device.

    Counts and histograms stay tensors there (no transfer, no synchronisation per batch);
    :meth:`report` reads them once.
    """

    def __init__(self, device: torch.device | str) -> None:
        import torch

        self.counts = torch.zeros(4, dtype=torch.int64, device=device)  # decoded, below_iou, outside, unstable
        self.iou_hist = torch.zeros(BINS, dtype=torch.int64, device=device)
        self.stability_hist = torch.zeros(BINS, dtype=torch.int64, device=device)
        self.duplicates = self.nested = self.skipped_points = 0

    def add_decoded(self, iou: torch.Tensor, thresh: float) -> None:
        """Count decoded masks, those below the predicted-IoU threshold, and histogram their scores.

        Parameters
        ----------
        iou
            Predicted IoU of every decoded mask, any shape.
        thresh
            The predicted-IoU threshold.
        """
        self.counts[0] += iou.numel()
        self.counts[1] += (iou < thresh).sum()
        self.iou_hist += _bin_counts(iou.flatten())

    def add_point_outside(self, outside: torch.Tensor) -> None:
        """Count the masks that passed the IoU filter but miss their own point.

        Parameters
        ----------
        outside
            (N,) bool, true for those masks.
        """
        self.counts[2] += outside.sum()

    def add_stability(self, stability: torch.Tensor, kept: torch.Tensor) -> None:
        """Histogram the stability of the masks reaching the stability filter and count those it drops.

        Parameters
        ----------
        stability
            (N,) stability scores.
        kept
            (N,) bool, the masks the filter keeps.
        """
        self.stability_hist += _bin_counts(stability)
        self.counts[3] += (~kept).sum()

    def report(self, pred_iou_thresh: float, stability_thresh: float) -> FilterReport:
        """The counts so far as a report of one tile (painting and kept still 0; the caller adds them).

        Parameters
        ----------
        pred_iou_thresh, stability_thresh
            The thresholds that were applied.
        """
        decoded, below_iou, outside, unstable = (int(v) for v in self.counts.cpu())
        return FilterReport(
            pred_iou_thresh=float(pred_iou_thresh), stability_thresh=float(stability_thresh), tiles=1,
            skipped_points=self.skipped_points, decoded=decoded, below_iou=below_iou, point_outside=outside,
            below_stability=unstable, duplicates=self.duplicates, nested=self.nested,
            iou_hist=self.iou_hist.cpu().numpy(), stability_hist=self.stability_hist.cpu().numpy(),
        )


def _bin_counts(scores):
    """(BINS,) int64 tensor: ``scores`` (1D float tensor) counted in equal bins over [0, 1] (clipped)."""
    import torch

    index = (scores.detach().float().clamp(0.0, 1.0) * BINS).long().clamp_(max=BINS - 1)
    return torch.bincount(index, minlength=BINS)
