"""SAM 2.1 (Hiera image encoder + FPN neck, prompt encoder, mask decoder, memory) in the official layout."""

from napari_sam.model.sam2.model import PREPROCESS_SAM2, Sam2, build_sam2

__all__ = ["PREPROCESS_SAM2", "Sam2", "build_sam2"]
