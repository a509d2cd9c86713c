"""SAM 2's image encoder: the Hiera trunk and an FPN neck (``image_encoder.trunk`` / ``image_encoder.neck``).

The neck projects every trunk stage to ``prompt_embed_dim`` channels (1x1 convs, coarsest
stage first in ``neck.convs``) and adds the upsampled (nearest) coarser level to the levels
in ``fpn_top_down_levels``; the ``scalp`` coarsest levels are then dropped. The finest two
kept levels become the mask decoder's high-resolution features, the coarsest kept level is
the image embedding. Positions are encoded with fixed sines (:func:`sine_position_encoding`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import Sam2Config
from napari_sam.model.sam2.hiera import Hiera

_SINE_TEMPERATURE = 10000.0


def sine_position_encoding(
    channels: int, size: tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed sine/cosine encoding of an ``(H, W)`` grid: ``(channels, H, W)``, rows' half first.

    Positions are 1-based and normalised so the last row / column is at ``2 pi``; each half
    interleaves sin and cos of the position over a geometric ladder of ``channels / 2`` frequencies.

    Parameters
    ----------
    channels
        Total channels (even): the first half encodes rows (y), the second half columns (x).
    size
        ``(H, W)`` of the grid.
    device
        Where the encoding is made.

    Returns
    -------
    torch.Tensor
        ``(channels, H, W)`` float32.
    """
    height, width = size
    half = channels // 2
    eps = 1e-6
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * 2 * math.pi
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * 2 * math.pi
    steps = torch.arange(half, dtype=torch.float32, device=device)
    frequencies = _SINE_TEMPERATURE ** (2 * (steps // 2) / half)

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, half): sin, cos interleaved
        phase = positions[:, None] / frequencies
        return torch.stack((phase[:, 0::2].sin(), phase[:, 1::2].cos()), dim=2).flatten(1)

    rows = encode(ys).t()[:, :, None].expand(half, height, width)
    cols = encode(xs).t()[:, None, :].expand(half, height, width)
    return torch.cat([rows, cols], dim=0)


class FpnNeck(nn.Module):
    """Lateral 1x1 convs to ``d_model`` channels, top-down sums on the chosen levels.

    ``convs[k]`` projects the ``k``-th coarsest trunk stage.
    """

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.d_model = config.prompt_embed_dim
        self.top_down_levels = tuple(config.fpn_top_down_levels)
        convs = []
        for dim in reversed(config.encoder.stage_dims):
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, self.d_model, kernel_size=1))
            convs.append(lateral)
        self.convs = nn.ModuleList(convs)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """FPN levels from the trunk's stage outputs.

        Parameters
        ----------
        stages
            The trunk's ``(B, C_i, H_i, W_i)`` maps, finest first.

        Returns
        -------
        list of torch.Tensor
            One ``(B, d_model, H_i, W_i)`` map per stage, finest first.
        """
        last = len(self.convs) - 1
        levels: list[torch.Tensor] = [stages[0]] * len(stages)
        coarser = None
        for level in range(last, -1, -1):
            lateral = self.convs[last - level](stages[level])
            if level in self.top_down_levels and coarser is not None:
                # upsampled in fp32, as the released model was run
                lateral = lateral + F.interpolate(coarser.float(), scale_factor=2.0, mode="nearest")
            coarser = lateral
            levels[level] = lateral
        return levels


class Sam2ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck: ``(B, 3, S, S)`` -> FPN levels kept after the scalp, finest first.

    With the released configs that is three maps of ``prompt_embed_dim`` channels at
    ``S/4``, ``S/8`` and ``S/16``.
    """

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.trunk = Hiera(config.encoder)
        self.neck = FpnNeck(config)
        self.scalp = config.encoder.scalp

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode a batch of normalised images.

        Parameters
        ----------
        x
            ``(B, 3, S, S)``.

        Returns
        -------
        list of torch.Tensor
            ``len(stages) - scalp`` maps ``(B, prompt_embed_dim, H_i, W_i)``, finest first.
        """
        levels = self.neck(self.trunk(x))
        return levels[: len(levels) - self.scalp] if self.scalp else levels
