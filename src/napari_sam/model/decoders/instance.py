"""The instance segmentation decoder: SAM's image embedding -> foreground and two distance maps.

A UNETR-style convolutional decoder (the layout micro-sam trains together with its SAM fine-tunes and publishes as
``vit_*_decoder.pt``) applied to the image embedding alone, without prompts: four 2x upsampling stages turn the
``(C, E, E)`` embedding into ``out_channels`` maps at ``16 E`` pixels, then a sigmoid. The module and parameter
names follow that published layout exactly, so those state dicts load with ``load_state_dict`` unchanged:

* ``deconv1 .. deconv4``: a chain of upsampling blocks from the embedding (2E, 4E, 8E, 16E pixels) whose outputs
  act as the "skip" features of the decoder (there are no encoder skips: the embedding is all the decoder sees);
* ``base``: two 3x3 convolutions on the embedding; ``decoder``: three (upsample, concatenate skip, two 3x3 convs)
  levels; ``deconv_out``: the last upsampling; ``decoder_head``: two 3x3 convs on it concatenated with deconv4's
  output; ``out_conv``: 1x1 to the output channels.

Channel meaning (micro-sam's training targets): 0 foreground probability, 1 normalised distance to the object's
centre (small at the centre), 2 normalised distance to the object's boundary (small at the boundary).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import InstanceDecoderConfig

# Key prefix of the decoder's tensors inside a whole-model state dict (``Sam.instance_decoder``).
DECODER_PREFIX = "instance_decoder."


class _TwoConvs(nn.Module):
    """(InstanceNorm, 3x3 conv, ReLU) twice. The norms have no affine parameters, as in the published layout."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _TransposedUpsample(nn.Module):
    """2x upsampling by a 2x2 stride-2 transposed convolution (parameters under ``block``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _BilinearUpsample(nn.Module):
    """2x bilinear upsampling, then a 1x1 convolution (parameters under ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def _upsample(config: InstanceDecoderConfig, in_channels: int, out_channels: int) -> nn.Module:
    cls = _TransposedUpsample if config.use_conv_transpose else _BilinearUpsample
    return cls(in_channels, out_channels)


class _Conv3x3(nn.Module):
    """A single 3x3 convolution (parameters under ``block``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _UpsampleBlock(nn.Module):
    """Upsample 2x, 3x3 conv, BatchNorm, ReLU: one step of the ``deconv1 .. deconv4`` chain."""

    def __init__(self, config: InstanceDecoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _upsample(config, in_channels, out_channels),
            _Conv3x3(out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _centre_crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The centre of ``x`` (channels and space, not batch) with ``like``'s shape.

    The published layout concatenates the upsampled decoder features with only the middle
    channels of each (twice as wide) skip feature, so the crop includes the channel axis.
    """
    index = [slice(None)]
    for have, want in zip(x.shape[1:], like.shape[1:]):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


class _Levels(nn.Module):
    """The decoder proper: per level, upsample (``samplers``), concatenate the skip, two convs (``blocks``)."""

    def __init__(self, config: InstanceDecoderConfig) -> None:
        super().__init__()
        features = config.features
        self.blocks = nn.ModuleList(_TwoConvs(features[k], features[k + 1]) for k in range(3))
        self.samplers = nn.ModuleList(_upsample(config, features[k], features[k + 1]) for k in range(3))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, _centre_crop(skip, x)], dim=1))
        return x


class InstanceDecoder(nn.Module):
    """micro-sam's instance segmentation decoder on a SAM image embedding.

    Parameters
    ----------
    config
        Channel sizes and the upsampling kind.
    img_size
        The SAM model's square input side (``SamConfig.img_size``): :meth:`maps` resizes the output
        to it before cropping away the padding, as SAM's own mask post-processing does.
    """

    def __init__(self, config: InstanceDecoderConfig, img_size: int) -> None:
        super().__init__()
        self.config = config
        self.img_size = img_size
        features = config.features
        self.deconv1 = _UpsampleBlock(config, config.embed_dim, features[0])
        self.deconv2 = _UpsampleBlock(config, features[0], features[1])
        self.deconv3 = _UpsampleBlock(config, features[1], features[2])
        self.deconv4 = _UpsampleBlock(config, features[2], features[3])
        self.base = _TwoConvs(config.embed_dim, features[0])
        self.decoder = _Levels(config)
        self.deconv_out = _upsample(config, features[3], features[3])
        self.decoder_head = _TwoConvs(2 * features[3], features[3])
        self.out_conv = nn.Conv2d(features[3], config.out_channels, kernel_size=1)
        self.final_activation = nn.Sigmoid()

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """The maps at 16x the embedding's resolution, in [0, 1].

        Parameters
        ----------
        image_embeddings
            ``(B, embed_dim, h, w)``: SAM's image embedding (the neck output).

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, 16 h, 16 w)`` float32 after the sigmoid, in the padded square model-input frame
            (under an autocast, all but the 1x1 output layer run in the autocast's precision).
        """
        z9 = self.deconv1(image_embeddings)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(image_embeddings), [z9, z6, z3])
        x = self.decoder_head(torch.cat([self.deconv_out(x), z0], dim=1))
        # The 1x1 output layer runs in fp32 even under a bf16 autocast (it costs nothing): summed in fp32 over
        # its input channels, the maps stay smooth instead of taking bf16's 256 steps per octave, which would
        # turn the slopes the watershed floods into plateaus.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.final_activation(self.out_conv(x.float()))

    def maps(
        self, image_embeddings: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """The maps in the original image's pixel frame.

        :meth:`forward`, resized (bilinear) to the square model input, cropped to the resized image
        (the rest is SAM's zero padding), resized to the original image size.

        Parameters
        ----------
        image_embeddings
            ``(B, embed_dim, h, w)``.
        input_size
            ``(H_in, W_in)``: the image's size after resizing its longest side to ``img_size`` (before padding).
        original_size
            ``(H0, W0)``: the image's size before resizing.

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, H0, W0)``, rows and columns of the original image.
        """
        x = self(image_embeddings)
        with torch.autocast(device_type=x.device.type, enabled=False):  # resizing stays in fp32 too
            x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
            x = x[..., : int(input_size[0]), : int(input_size[1])]
            return F.interpolate(x, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)


def split_decoder_state(
    state_dict: Mapping[str, torch.Tensor], prefix: str = DECODER_PREFIX
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a whole-model state dict into the SAM part and the decoder part (prefix removed).

    Parameters
    ----------
    state_dict
        Tensors under official keys, the decoder's under ``prefix``.
    prefix
        The decoder's key prefix.

    Returns
    -------
    tuple of dict
        ``(sam_state, decoder_state)``; ``decoder_state`` is empty when there is no decoder.
    """
    sam = {key: value for key, value in state_dict.items() if not key.startswith(prefix)}
    decoder = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    return sam, decoder


def decoder_config_from_state_dict(decoder_state: Mapping[str, torch.Tensor]) -> InstanceDecoderConfig:
    """The :class:`InstanceDecoderConfig` a decoder state dict (keys without prefix) was saved from.

    Read from the shapes: ``base`` gives the embedding width, ``out_conv`` the finest level's width and
    the output channels, and the upsamplers' parameter names the upsampling kind.

    Parameters
    ----------
    decoder_state
        The decoder's tensors (as in micro-sam's ``vit_*_decoder.pt``).

    Returns
    -------
    InstanceDecoderConfig
        The architecture; the caller still checks every key and shape against it.

    Raises
    ------
    KeyError
        A tensor needed to read the sizes is missing (not a decoder state dict).
    """
    base = decoder_state["base.block.1.weight"]  # (features[0], embed_dim, 3, 3)
    out = decoder_state["out_conv.weight"]  # (out_channels, initial_features, 1, 1)
    transposed = "decoder.samplers.0.block.weight" in decoder_state
    return InstanceDecoderConfig(
        embed_dim=int(base.shape[1]),
        initial_features=int(out.shape[1]),
        out_channels=int(out.shape[0]),
        use_conv_transpose=transposed,
    )
