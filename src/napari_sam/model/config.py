"""Architecture configurations of the SAM family.

Every size in the networks comes from these dataclasses, never from literals,
so a tiny test model (256 input) runs through exactly the same code as ViT-H.
This module imports nothing heavy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Point-prompt labels as SAM's prompt encoder reads them (one definition for the whole package).
POSITIVE = 1
NEGATIVE = 0
PADDING = -1  # a slot with no point (pads a batch of prompts to equal length)


@dataclass(frozen=True)
class ViTEncoderConfig:
    """SAM's plain ViT image encoder (vit_b / vit_l / vit_h)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0
    kind: str = field(default="vit", init=False)

    @property
    def stride(self) -> int:
        """Input pixels per embedding pixel."""
        return self.patch_size


@dataclass(frozen=True)
class TinyViTEncoderConfig:
    """MobileSAM's TinyViT image encoder (vit_t): conv stem + 3 attention stages."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000  # unused classification head, kept so checkpoints load unchanged
    kind: str = field(default="tiny_vit", init=False)

    @property
    def stride(self) -> int:
        """Input pixels per embedding pixel (stem /4, then /2, /2; the last stage keeps size)."""
        return 16


@dataclass(frozen=True)
class SamConfig:
    """A whole SAM model: image encoder + prompt encoder + mask decoder.

    ``img_size`` is the square input side (longest image side is resized to it);
    the image embedding is ``(prompt_embed_dim, img_size // stride, img_size // stride)``.
    """

    name: str
    encoder: ViTEncoderConfig | TinyViTEncoderConfig
    img_size: int = 1024
    prompt_embed_dim: int = 256  # neck output channels == transformer width of the decoder
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def embedding_size(self) -> int:
        """Side of the (square) image embedding grid."""
        return self.img_size // self.encoder.stride

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4x the embedding)."""
        return 4 * self.embedding_size


VIT_B = SamConfig("vit_b", ViTEncoderConfig(768, 12, 12, (2, 5, 8, 11)))
VIT_L = SamConfig("vit_l", ViTEncoderConfig(1024, 24, 16, (5, 11, 17, 23)))
VIT_H = SamConfig("vit_h", ViTEncoderConfig(1280, 32, 16, (7, 15, 23, 31)))
VIT_T = SamConfig("vit_t", TinyViTEncoderConfig())

# Tiny configurations for tests and the trained test fixture: same code paths, small sizes.
TINY_VIT = SamConfig(
    "tiny_vit_test",
    ViTEncoderConfig(embed_dim=48, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4),
    img_size=256,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_num_heads=2,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)
TINY_TINYVIT = SamConfig(
    "tiny_tinyvit_test",
    TinyViTEncoderConfig(
        embed_dims=(16, 24, 32, 48), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 3), window_sizes=(4, 4, 8, 4),
        num_classes=10,
    ),
    img_size=256,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_num_heads=2,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)

CONFIGS: dict[str, SamConfig] = {c.name: c for c in (VIT_B, VIT_L, VIT_H, VIT_T, TINY_VIT, TINY_TINYVIT)}

# The tiny model trained here on synthetic microscopy (tests/data/tiny_sam_synthetic.pt): a TEST FIXTURE for
# end-to-end quality tests, not a model for users. Patch size 8 gives a 32x32 embedding and 128x128 low-res
# masks, fine enough for the small objects of a 256 input.
TINY_TRAINED = SamConfig(
    "tiny_trained_test",
    # windowed attention only (2x2 windows of 16x16 patches): global attention over all 1024 patches would
    # double the cost of training on a CPU; the decoder attends globally anyway
    ViTEncoderConfig(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(), window_size=16, patch_size=8),
    img_size=256,
    prompt_embed_dim=64,
    mask_in_chans=16,
    decoder_num_heads=4,
    decoder_mlp_dim=256,
    iou_head_hidden_dim=64,
)
CONFIGS[TINY_TRAINED.name] = TINY_TRAINED
