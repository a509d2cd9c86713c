"""Settings of automatic mask generation: the ONE place their defaults live, and the choice of method.

The CLI, the Segment everything widget and ``segment_everything`` all read their
defaults from :class:`AutomaticParams` (mask generation from SAM prompts, "amg") and
from ``napari_sam.engine.automatic.instance.InstanceParams`` (instance mode: the
model's instance decoder and a seeded watershed); :func:`resolve_method` says which
of the two a run uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_sam.engine.errors import InputError

METHODS = ("instance", "amg")
"""``"instance"``: the model's instance decoder (foreground and distance maps) and a seeded watershed,
one decoder pass per tile; ``"amg"``: automatic mask generation from a grid of SAM point prompts."""

DECODER_MODELS_HINT = "a model with an instance decoder, e.g. vit_b_lm"
"""How error messages name the models instance mode needs (micro-sam's zoo entries carry a decoder)."""


def has_instance_decoder(model: Any) -> bool:
    """Whether ``model`` (a loaded SAM module) carries an instance decoder.

    Parameters
    ----------
    model
        A SAM or SAM 2 ``nn.Module``; modules without the attribute have none.

    Returns
    -------
    bool
        True when ``model.instance_decoder`` is set.
    """
    return getattr(model, "instance_decoder", None) is not None


def check_method(method: str | None) -> None:
    """Raise ``InputError`` unless ``method`` is None or one of :data:`METHODS`.

    Parameters
    ----------
    method
        The method asked for.

    Raises
    ------
    InputError
        Any other value; the message lists the allowed ones.
    """
    if method is not None and method not in METHODS:
        raise InputError(
            f"method must be 'instance' (the model's instance decoder), 'amg' (automatic masks from SAM prompts) "
            f"or None (instance when the model has a decoder), got {method!r}."
        )


def resolve_method(method: str | None, model: Any) -> str:
    """The method a run uses: ``method`` itself, or for None ``"instance"`` when the model has a decoder, else ``"amg"``.

    Parameters
    ----------
    method
        ``"instance"``, ``"amg"`` or None.
    model
        The loaded SAM module the run uses.

    Returns
    -------
    str
        ``"instance"`` or ``"amg"``.

    Raises
    ------
    InputError
        An unknown method, or ``"instance"`` with a model that has no instance decoder.
    """
    check_method(method)
    if method is None:
        return "instance" if has_instance_decoder(model) else "amg"
    if method == "instance" and not has_instance_decoder(model):
        raise InputError(
            f"Instance mode needs {DECODER_MODELS_HINT}; this model has none. Choose such a model, or use "
            "method 'amg' (automatic masks from SAM prompts, --method amg)."
        )
    return method


def method_of(params: Any) -> str:
    """The method a tile's settings belong to: ``"amg"`` for :class:`AutomaticParams`, else ``"instance"``.

    Parameters
    ----------
    params
        ``AutomaticParams`` or ``InstanceParams``.

    Returns
    -------
    str
        ``"amg"`` or ``"instance"``.
    """
    return "amg" if isinstance(params, AutomaticParams) else "instance"


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
