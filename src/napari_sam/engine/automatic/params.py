"""Settings of automatic mask generation: the ONE place their defaults live.

The CLI, the Segment everything widget and ``segment_everything`` all read their
defaults from :class:`AutomaticParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_sam.engine.errors import InputError


@dataclass(frozen=True)
class AutomaticParams:
    """Settings of automatic mask generation (defaults follow the reference generator)."""

    points_per_side: int = 32
    """The point grid is ``points_per_side x points_per_side`` over the image."""
    points_per_batch: int | None = None
    """Prompts decoded at once; None picks a batch that keeps decoder memory near ``batch_memory_bytes``."""
    batch_memory_bytes: int | None = None
    """Decoder activations per batch; None: 128 MiB on a CPU, 1 GiB on an accelerator. On a 2-core
    CPU larger batches were slower, not faster (tiny model: 64 prompts 1.45 s, 128 prompts 2.07 s
    per image; ViT-B: 48 ms per prompt up to 32 prompts, 80 ms at 128)."""
    pred_iou_thresh: float = 0.88
    """Drop masks whose predicted IoU is below this."""
    stability_thresh: float = 0.95
    """Drop masks whose stability score is below this."""
    stability_offset: float = 1.0
    """Logit offset of the stability score."""
    nms_thresh: float = 0.7
    """Box IoU above which the lower-scoring of two masks is suppressed."""
    nested_thresh: float | None = None
    """If set: a mask is also suppressed when this fraction of the smaller of it and a better-scoring
    mask lies inside the other (a part inside its object, an object inside its cluster); None: off."""
    min_area: int = 0
    """Objects, holes and specks smaller than this many pixels (original frame) are removed."""
    require_point_inside: bool = True
    """Drop masks that do not contain their own prompt point (checked on the low-res logits): a
    positive point says "this pixel is in the object", so a mask elsewhere answers another question."""
    max_hidden_fraction: float = 0.5
    """A mask more than this fraction covered by smaller masks painted over it is dropped."""
    coarse_levels: int = 1
    """Coarse-to-fine decoding: the grid is decoded in ``coarse_levels + 1`` passes, every
    ``2**k``-th point first; a point of a later pass is skipped when it lies inside the
    smallest accepted mask of an earlier prompt (it would ask for the same object again).
    0 decodes every point, as the reference generator does."""

    def validate(self) -> None:
        """Check every setting's range.

        Raises
        ------
        InputError
            A setting is out of range; the message names it and its allowed range.
        """
        if int(self.points_per_side) < 1:
            raise InputError(f"points_per_side must be at least 1, got {self.points_per_side}.")
        if self.points_per_batch is not None and int(self.points_per_batch) < 1:
            raise InputError(f"points_per_batch must be at least 1 (or None), got {self.points_per_batch}.")
        if self.nested_thresh is not None and not 0.0 < float(self.nested_thresh) <= 1.0:
            raise InputError(f"nested_thresh must lie in (0, 1] or be None, got {self.nested_thresh}.")
        for name in ("pred_iou_thresh", "stability_thresh", "nms_thresh", "max_hidden_fraction"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {value}.")
        if int(self.min_area) < 0:
            raise InputError(f"min_area must be >= 0, got {self.min_area}.")
        if int(self.coarse_levels) < 0:
            raise InputError(f"coarse_levels must be >= 0, got {self.coarse_levels}.")
