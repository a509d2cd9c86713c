"""The whole SAM model (image encoder + prompt encoder + mask decoder) and its builder."""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.model.config import CONFIGS, SamConfig
from napari_sam.model.sam.image_encoder import ImageEncoderViT
from napari_sam.model.sam.mask_decoder import MaskDecoder
from napari_sam.model.sam.prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Segment Anything: the three networks plus the pixel normalisation constants.

    ``pixel_mean`` / ``pixel_std`` are ``(3, 1, 1)`` buffers (RGB, 0-255 scale). They
    are not saved in the state dict, so the released checkpoints load unchanged.
    The sizes of everything are in ``config``.
    """

    mask_threshold: float = 0.0  # logits above this are foreground
    image_format: str = "RGB"

    def __init__(
        self,
        config: SamConfig,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        instance_decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # micro-sam's instance segmentation decoder on the image embedding, or None; its state-dict keys are
        # prefixed "instance_decoder." (absent when None, so official checkpoints load unchanged)
        self.instance_decoder = instance_decoder
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device


def build_image_encoder(config: SamConfig) -> nn.Module:
    """The image encoder named by ``config.encoder.kind``: ``(B, 3, S, S) -> (B, C, E, E)``.

    Parameters
    ----------
    config
        The model's config; ``S = config.img_size``, ``C = config.prompt_embed_dim``,
        ``E = config.embedding_size``.

    Returns
    -------
    torch.nn.Module
        An :class:`~napari_sam.model.sam.image_encoder.ImageEncoderViT` (``"vit"``) or a
        :class:`~napari_sam.model.sam.tiny_vit.TinyViT` (``"tiny_vit"``), randomly initialised.

    Raises
    ------
    ValueError
        An unknown encoder kind.
    """
    kind = config.encoder.kind
    if kind == "vit":
        return ImageEncoderViT(config)
    if kind == "tiny_vit":
        from napari_sam.model.sam.tiny_vit import (
            TinyViT,  # only MobileSAM-style models need it
        )

        return TinyViT(config)
    raise ValueError(f"unknown image encoder kind {kind!r}")


def build_sam(config: SamConfig | str) -> Sam:
    """A randomly initialised :class:`Sam` in eval mode, from a config or a name in ``CONFIGS``.

    Builds on the current default device, so ``with torch.device("meta"): build_sam(...)``
    gives a weightless model (to compare state-dict shapes, or to ``load_state_dict(assign=True)``).

    Parameters
    ----------
    config
        A :class:`SamConfig`, or the name of one in ``CONFIGS``.

    Returns
    -------
    Sam
        The model, in eval mode.

    Raises
    ------
    KeyError
        ``config`` is a name that is not in ``CONFIGS``.
    """
    if isinstance(config, str):
        try:
            config = CONFIGS[config]
        except KeyError:
            raise KeyError(f"unknown SAM config {config!r}; known: {sorted(CONFIGS)}") from None
    instance_decoder = None
    if config.instance_decoder is not None:
        from napari_sam.model.decoders.instance import InstanceDecoder

        instance_decoder = InstanceDecoder(config.instance_decoder, config.img_size)
    model = Sam(config, build_image_encoder(config), PromptEncoder(config), MaskDecoder(config), instance_decoder)
    return model.eval()
