"""SAM (ViT and TinyViT image encoders, prompt encoder, two-way mask decoder) in the official layout."""

from napari_sam.model.sam.model import Sam, build_image_encoder, build_sam

__all__ = ["Sam", "build_image_encoder", "build_sam"]
