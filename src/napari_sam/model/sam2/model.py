"""The whole SAM 2.1 model in the layout of the released ``sam2.1_hiera_*.pt`` checkpoints, and its builder.

For single images it presents what :class:`~napari_sam.engine.Predictor` uses of SAM:
``prompt_encoder``, ``mask_decoder``, ``config`` (``img_size``, ``embedding_size``,
``low_res_mask_size``), plus :meth:`Sam2.encode_image`, which returns the image embedding
*and* the two high-resolution features the SAM 2 decoder needs, and
:meth:`Sam2.normalize_input`, SAM 2's input transform (the whole image resized to the
square input, no padding). The memory networks and the object-pointer heads are built so
the released checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import SAM2_CONFIGS, Sam2Config
from napari_sam.model.layers import MLP
from napari_sam.model.sam2.heads import Sam2MaskDecoder, Sam2PromptEncoder
from napari_sam.model.sam2.image_encoder import Sam2ImageEncoder
from napari_sam.model.sam2.memory import MemoryAttention, MemoryEncoder

PREPROCESS_SAM2 = "sam2"  # the model's ``preprocessing``: whole image resized to img_size x img_size (antialiased)


class Sam2(nn.Module):
    """SAM 2.1: image encoder, prompt encoder, mask decoder, memory encoder and memory attention.

    ``pixel_mean`` / ``pixel_std`` are non-persistent ``(3, 1, 1)`` buffers (RGB, 0-255 scale),
    so the released state dicts load unchanged.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    # the released predictor clamps the low-res logits it returns (to feed back as mask input) to this range
    low_res_logit_limit: float = 32.0

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.config = config
        dim, memory_dim = config.prompt_embed_dim, config.memory_dim
        self.preprocessing = PREPROCESS_SAM2
        # no instance decoder is published for SAM 2: automatic segmentation uses prompts (method "amg")
        self.instance_decoder = None
        self.image_encoder = Sam2ImageEncoder(config)
        self.sam_prompt_encoder = Sam2PromptEncoder(config)
        self.sam_mask_decoder = Sam2MaskDecoder(config)
        self.memory_attention = MemoryAttention(config)
        self.memory_encoder = MemoryEncoder(config)
        # learned embeddings of the memory: time of each memory slot, "no memory yet", "object absent"
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, memory_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, memory_dim))
        # mask input given as the output on frames prompted with a mask: downsampled for the object pointer
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(dim, dim, dim, num_layers=3)
        self.obj_ptr_tpos_proj = nn.Linear(dim, memory_dim)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def prompt_encoder(self) -> Sam2PromptEncoder:
        """The prompt encoder under SAM's name (the engine's interface)."""
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        """The mask decoder under SAM's name (the engine's interface)."""
        return self.sam_mask_decoder

    def normalize_input(self, rgb: torch.Tensor) -> torch.Tensor:
        """SAM 2's input transform: ``(B, 3, H, W)`` RGB in 0-255 -> ``(B, 3, S, S)`` normalised.

        The whole image is resized to the square input (bilinear, antialiased, aspect ratio
        not kept), then normalised with ``pixel_mean`` / ``pixel_std``.

        Parameters
        ----------
        rgb
            ``(B, 3, H, W)`` float tensor, values 0-255 (e.g. a uint8 image converted to float).

        Returns
        -------
        torch.Tensor
            ``(B, 3, S, S)``, ``S = config.img_size``.
        """
        size = self.config.img_size
        x = rgb.float() / 255.0
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.pixel_mean / 255.0) / (self.pixel_std / 255.0)

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Image embedding for prompts without memory, and the decoder's high-resolution features.

        Parameters
        ----------
        x
            ``(B, 3, S, S)`` from :meth:`normalize_input`.

        Returns
        -------
        embedding : torch.Tensor
            ``(B, C, E, E)``: the coarsest kept FPN level plus the learned no-memory embedding.
        high_res_features : tuple of torch.Tensor
            ``(B, C/8, 4E, 4E)`` and ``(B, C/4, 2E, 2E)``.
        """
        embedding, high_res = self.encode_frame(x)
        return embedding + self.no_mem_embed.reshape(1, -1, 1, 1), high_res

    def encode_frame(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Raw frame features: the coarsest kept FPN level (no memory conditioning) and the high-res features.

        Parameters
        ----------
        x
            ``(B, 3, S, S)`` from :meth:`normalize_input`.

        Returns
        -------
        features : torch.Tensor
            ``(B, C, E, E)``.
        high_res_features : tuple of torch.Tensor
            As for :meth:`encode_image`.
        """
        levels = self.image_encoder(x)
        return levels[-1], self.sam_mask_decoder.project_high_res(levels)


def build_sam2(config: Sam2Config | str) -> Sam2:
    """A randomly initialised :class:`Sam2` in eval mode, from a config or a name in ``SAM2_CONFIGS``.

    Builds on the current default device (``with torch.device("meta")`` gives a weightless model).

    Parameters
    ----------
    config
        A :class:`Sam2Config`, or the name of one in ``SAM2_CONFIGS`` (e.g. ``"sam2.1_hiera_tiny"``).

    Returns
    -------
    Sam2
        The model, in eval mode.

    Raises
    ------
    KeyError
        ``config`` is a name that is not in ``SAM2_CONFIGS``.
    """
    if isinstance(config, str):
        try:
            config = SAM2_CONFIGS[config]
        except KeyError:
            raise KeyError(f"unknown SAM 2 config {config!r}; known: {sorted(SAM2_CONFIGS)}") from None
    return Sam2(config).eval()
