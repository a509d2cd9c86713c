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

        ``intensity_range``: one (low, high) scaling shared by every plane of a stack.
        """
        ...

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding`` (from ``compute_embedding`` or a cache) current for ``predict``."""
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

        Returns masks (K, H, W) bool, scores (K,) and low-res logits (K, L, L);
        raises ``InputError`` for prompts it cannot use (none, outside the image, ...).
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

        Returns masks (B, K, H, W) bool, scores (B, K) and logits (B, K, L, L).
        """
        ...

    def encoder_fingerprint(self) -> str:
        """A digest equal for two backends exactly when their embeddings can be exchanged.

        Recorded in saved embedding caches so that a cache made by other weights
        (e.g. a checkpoint replaced at the same path) is refused.
        """
        ...
