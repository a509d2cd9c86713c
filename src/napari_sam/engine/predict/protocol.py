"""What the napari side needs from a prompted-segmentation backend.

:class:`PredictorProtocol` is the whole interface ``_napari/`` uses: embed a 2D
plane (slow, in a worker thread), make an embedding current (fast, main thread),
decode prompts into masks. SAM's :class:`~napari_sam.engine.Predictor` satisfies it
structurally (no inheritance); SAM 2, an instance decoder or a client of a remote
server plug in by providing the same members.

Frames are those of :mod:`napari_sam.engine.predict.predictor`: images (H, W) or
(H, W, C) in the (row, col) pixel frame; points (row, col); boxes (min_row, min_col,
max_row, max_col); masks at the image's (H, W). Embeddings are
:class:`~napari_sam.engine.ImageEmbedding` objects, which the embedding cache keeps
in memory and on disk.

``runtime_checkable`` makes ``isinstance`` check that the members exist, not their
signatures; ``tests/engine/test_predictor_protocol.py`` checks those for ``Predictor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from napari_sam.engine.predict.predictor import ImageEmbedding


@runtime_checkable
class ModelConfigLike(Protocol):
    """The model facts the napari side reads (a :class:`~napari_sam.model.config.SamConfig` has them)."""

    name: str  # architecture name, shown to the user and recorded in cache fingerprints
    img_size: int  # the square input size S
    prompt_embed_dim: int  # channels of an embedding: with embedding_size, its memory footprint
    embedding_size: int  # an embedding is (1, prompt_embed_dim, embedding_size, embedding_size)
    low_res_mask_size: int  # L of the (L, L) logits ``predict`` returns and takes as mask_input


@runtime_checkable
class PredictorProtocol(Protocol):
    """A prompted-segmentation backend: one current embedding, any number of prompt sets."""

    config: ModelConfigLike
    device: torch.device  # where embeddings live; shown to the user
    autocast_dtype: torch.dtype | None  # compute precision shown to the user; None means fp32

    def compute_embedding(self, image: Any, intensity_range: tuple | None = None) -> ImageEmbedding:
        """Embed one 2D image without changing the current embedding (safe in a worker thread).

        Parameters
        ----------
        image
            (H, W) or (H, W, C) in the (row, col) pixel frame.
        intensity_range
            One (low, high) scaling shared by every plane of a stack; None: the
            image's own.

        Returns
        -------
        ImageEmbedding
            The embedding, to pass to :meth:`set_embedding` (or to cache).
        """
        ...

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding`` (from ``compute_embedding`` or a cache) current for ``predict``.

        Parameters
        ----------
        embedding
            An embedding made by this backend's model; others are refused with ``InputError``.
        """
        ...

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One object: points (N, 2) with labels (N,) 1/0, box (4,), mask_input (1, L, L).

        Parameters
        ----------
        points
            (N, 2) (row, col) in the image's pixel frame, or None.
        labels
            (N,) 1 positive / 0 negative, one per point.
        box
            (4,) (min_row, min_col, max_row, max_col), or None.
        mask_input
            (1, L, L) low-res logits from a previous call, or None.
        multimask
            Return several candidates (K > 1) for an ambiguous prompt.

        Returns
        -------
        masks : np.ndarray
            (K, H, W) bool at the image's size.
        scores : np.ndarray
            (K,) predicted quality of each mask.
        logits : np.ndarray
            (K, L, L) low-res logits (one can be fed back as ``mask_input``).

        Raises
        ------
        InputError
            For prompts it cannot use (none, outside the image, ...).
        """
        ...

    def predict_batch(
        self,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B objects at once: points (B, N, 2), labels (B, N), boxes (B, 4), mask_input (B, 1, L, L).

        Parameters
        ----------
        points, labels
            (B, N, 2) (row, col) and (B, N) 1/0, N points per object, or None.
        boxes
            (B, 4) (min_row, min_col, max_row, max_col), or None.
        mask_input
            (B, 1, L, L) low-res logits, or None.
        multimask
            Several candidates per object instead of one.

        Returns
        -------
        masks, scores, logits : np.ndarray
            (B, K, H, W) bool, (B, K) and (B, K, L, L).

        Raises
        ------
        InputError
            For prompts it cannot use.
        """
        ...

    def encoder_fingerprint(self) -> str:
        """A digest equal for two backends exactly when their embeddings can be exchanged.

        Recorded in saved embedding caches so that a cache made by other weights
        (e.g. a checkpoint replaced at the same path) is refused.
        """
        ...
