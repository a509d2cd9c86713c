"""Architecture configurations of the SAM family.

Every size in the networks comes from these dataclasses, never from literals,
so a tiny test model (256 input) runs through exactly the same code as ViT-H.
This module imports nothing heavy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
class InstanceDecoderConfig:
    """The instance segmentation decoder on SAM's image embedding (micro-sam's UNETR decoder layout).

    It reads the ``(embed_dim, E, E)`` image embedding (the neck output, i.e. the SAM config's
    ``prompt_embed_dim``), upsamples it four times (x16) and predicts ``out_channels`` maps in
    [0, 1]: foreground probability, distance to the object centre, distance to the object boundary.
    """

    embed_dim: int
    initial_features: int = 64  # channels of the finest level; level k has initial_features * 2**k
    out_channels: int = 3
    use_conv_transpose: bool = True  # 2x2 transposed convolutions (micro-sam's published decoders) or bilinear + 1x1

    @property
    def features(self) -> tuple[int, int, int, int]:
        """Channels of the four decoder levels, coarsest first (``initial_features * (8, 4, 2, 1)``)."""
        return tuple(self.initial_features * 2**level for level in (3, 2, 1, 0))  # type: ignore[return-value]


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
    # the optional instance segmentation decoder on the image embedding (micro-sam's); None: the model has none
    instance_decoder: InstanceDecoderConfig | None = None

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

# Test fixture v2 (tests/data/tiny_sam_synthetic_v2.pt), also a TEST FIXTURE: the same encoder with global
# attention in its last block (as SAM's blocks 2, 5, 8, 11), and an instance decoder trained jointly. Eight
# features at its finest level keep a training step on one CPU core about 1.7 times the cost of SAM's alone
# (16 features: 3 times); its full-resolution levels run at 512 x 512 (16 x the 32 x 32 embedding).
TINY_TRAINED_V2 = replace(
    TINY_TRAINED,
    name="tiny_trained_v2",
    encoder=replace(TINY_TRAINED.encoder, global_attn_indexes=(3,)),
    instance_decoder=InstanceDecoderConfig(embed_dim=TINY_TRAINED.prompt_embed_dim, initial_features=8),
)
CONFIGS[TINY_TRAINED_V2.name] = TINY_TRAINED_V2


# ----------------------------------------------------------------------------------------------------------------
# SAM 2.1: Hiera image encoder with an FPN neck, SAM-style heads with high-resolution features, and the memory
# (encoder + attention) used to carry objects from frame to frame. Layout of the official sam2.1_hiera_*.pt files.


@dataclass(frozen=True)
class HieraEncoderConfig:
    """SAM 2's hierarchical Hiera trunk: a conv patch stem, then stages of (windowed) attention blocks.

    Each stage after the first halves the grid (max-pooled queries in its first block) and
    multiplies width by ``dim_mul`` and heads by ``head_mul``. ``window_spec`` gives each
    stage's attention window (in tokens); blocks in ``global_att_blocks`` attend globally.
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    q_pool: int = 3  # how many stage transitions pool the queries (downsample)
    q_stride: int = 2
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    patch_kernel_size: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    scalp: int = 1  # coarsest FPN levels (stages) dropped from the encoder's outputs
    kind: str = field(default="hiera", init=False)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Width of every stage's output, highest resolution first."""
        return tuple(int(self.embed_dim * self.dim_mul**stage) for stage in range(len(self.stages)))

    @property
    def stride(self) -> int:
        """Input pixels per image-embedding pixel: the stem, then one halving per kept stage after the first."""
        return self.patch_stride * self.q_stride ** (len(self.stages) - self.scalp - 1)


@dataclass(frozen=True)
class Sam2Config:
    """A whole SAM 2.1 model: Hiera + FPN neck, prompt encoder, mask decoder, memory encoder and attention.

    ``img_size`` is the square input side (the whole image is resized to it, aspect not kept);
    the image embedding is ``(prompt_embed_dim, E, E)`` with ``E = img_size // backbone_stride``,
    and the decoder also reads two higher-resolution FPN levels (4E and 2E).
    """

    name: str
    encoder: HieraEncoderConfig
    img_size: int = 1024
    prompt_embed_dim: int = 256  # FPN width == decoder width == memory attention width
    fpn_top_down_levels: tuple[int, ...] = (2, 3)  # FPN levels that receive the coarser level, upsampled
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # single-mask output falls back to the best multimask output when its stability is below this
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    # memory
    memory_dim: int = 64
    num_maskmem: int = 7
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_mlp_dim: int = 2048
    rope_theta: float = 10000.0
    memory_fuser_layers: int = 2
    memory_fuser_kernel_size: int = 7
    mask_downsampler_kernel_size: int = 3
    mask_downsampler_stride: int = 2
    mask_downsampler_total_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    max_obj_ptrs_in_encoder: int = 16
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    kind: str = field(default="sam2", init=False)

    @property
    def backbone_stride(self) -> int:
        """Input pixels per image-embedding pixel (see :attr:`HieraEncoderConfig.stride`)."""
        return self.encoder.stride

    @property
    def embedding_size(self) -> int:
        """Side of the (square) image embedding grid."""
        return self.img_size // self.backbone_stride

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (4x the embedding)."""
        return 4 * self.embedding_size

    @property
    def high_res_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """``(channels, side, side)`` of the two high-resolution decoder features (4E and 2E)."""
        dim, side = self.prompt_embed_dim, self.embedding_size
        return ((dim // 8, 4 * side, 4 * side), (dim // 4, 2 * side, 2 * side))


SAM2_HIERA_T = Sam2Config(
    "sam2.1_hiera_tiny", HieraEncoderConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7))
)
SAM2_HIERA_S = Sam2Config(
    "sam2.1_hiera_small",
    HieraEncoderConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), window_pos_embed_bkg_spatial_size=(7, 7)),
)
SAM2_HIERA_B_PLUS = Sam2Config("sam2.1_hiera_base_plus", HieraEncoderConfig(112, 2, (2, 3, 16, 3), (12, 16, 20)))
SAM2_HIERA_L = Sam2Config(
    "sam2.1_hiera_large",
    HieraEncoderConfig(
        144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7)
    ),
)
# A tiny SAM 2 for tests: the same code paths at a 256 input (16x16 embedding), narrow everywhere.
TINY_SAM2 = Sam2Config(
    "tiny_sam2_test",
    HieraEncoderConfig(
        embed_dim=8, num_heads=1, stages=(1, 2, 2, 1), global_att_blocks=(4,), window_spec=(8, 4, 4, 2),
        window_pos_embed_bkg_spatial_size=(4, 4),
    ),
    img_size=256,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
    memory_dim=16,
    memory_attention_layers=2,
    memory_attention_mlp_dim=64,
)
SAM2_CONFIGS: dict[str, Sam2Config] = {
    c.name: c for c in (SAM2_HIERA_T, SAM2_HIERA_S, SAM2_HIERA_B_PLUS, SAM2_HIERA_L, TINY_SAM2)
}

# Every architecture a checkpoint may be recognised as (SAM and SAM 2); CONFIGS stays SAM's own.
ALL_CONFIGS: dict[str, SamConfig | Sam2Config] = {**CONFIGS, **SAM2_CONFIGS}
