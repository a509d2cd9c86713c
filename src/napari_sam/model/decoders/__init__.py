"""Decoders that read SAM's image embedding without prompts (instance segmentation)."""

from __future__ import annotations

from napari_sam.model.decoders.instance import (
    DECODER_PREFIX,
    InstanceDecoder,
    decoder_config_from_state_dict,
    split_decoder_state,
)

__all__ = ["DECODER_PREFIX", "InstanceDecoder", "decoder_config_from_state_dict", "split_decoder_state"]
