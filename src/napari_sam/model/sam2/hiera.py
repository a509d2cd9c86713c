"""SAM 2's Hiera trunk: a hierarchical vision transformer with pooled queries between stages.

A ``(B, 3, S, S)`` image goes through a strided conv stem (``patch_stride``) to a
``(B, S/4, S/4, C)`` channels-last token grid, gets a windowed absolute position
embedding (a coarse background table resized to the grid plus a per-window table tiled
over it), then ``sum(stages)`` blocks. The first block of each later stage max-pools its
queries (and its shortcut) by ``q_stride``, halving the grid, and widens the channels by
``dim_mul``. The trunk returns every stage's output, highest resolution first, as
``(B, C_i, H_i, W_i)`` maps. Parameter names follow the released sam2.1 checkpoints
(``image_encoder.trunk.*``). All sizes come from :class:`HieraEncoderConfig`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import HieraEncoderConfig
from napari_sam.model.layers import MLP
from napari_sam.model.sam.image_encoder import merge_windows, partition_windows

# Hiera's LayerNorms use this epsilon in the released checkpoints.
_NORM_EPS = 1e-6


class GeluMLP(MLP):
    """:class:`~napari_sam.model.layers.MLP` with GELU between the layers (Hiera's and the memory's MLPs)."""

    activation = staticmethod(F.gelu)


def _max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, H // stride, W // stride, C)`` by max pooling (channels last)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


class PooledAttention(nn.Module):
    """Multi-head self-attention on a ``(B, H, W, dim)`` grid whose queries may be max-pooled.

    With ``q_stride`` the output grid is ``(H / q_stride, W / q_stride)``: every output token
    attends to all ``H * W`` input tokens. Output width ``dim_out``.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within each grid of ``x`` (a batch of images or of windows).

        Parameters
        ----------
        x
            ``(B, H, W, dim)`` tokens, channels last.

        Returns
        -------
        torch.Tensor
            ``(B, H', W', dim_out)``; ``H' = H / q_stride`` when queries are pooled, else ``H``.
        """
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each (B, HW, heads, hd)
        if self.q_stride:
            q = _max_pool(q.reshape(batch, height, width, -1), self.q_stride)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, -1))


class HieraBlock(nn.Module):
    """Pre-norm transformer block, windowed (``window_size`` > 0) or global, optionally pooling.

    A block that changes the width projects its shortcut with ``proj`` (and pools it
    like the queries), so the residual keeps the output grid and width.
    """

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, q_stride: int | None, window_size: int
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.attn = PooledAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=_NORM_EPS)
        self.mlp = GeluMLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block on a ``(B, H, W, dim)`` grid.

        Parameters
        ----------
        x
            ``(B, H, W, dim)`` tokens.

        Returns
        -------
        torch.Tensor
            ``(B, H', W', dim_out)``, ``H' = H / q_stride`` for a pooling block.
        """
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _max_pool(shortcut, self.q_stride)
        window = self.window_size
        if window > 0:
            height, width = x.shape[1:3]
            x, _ = partition_windows(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride:
                # the windows shrank with the pooled queries; the grid is the (pooled) shortcut's
                window //= self.q_stride
                height, width = shortcut.shape[1:3]
            padded = (-(-height // window) * window, -(-width // window) * window)
            x = merge_windows(x, window, padded, (height, width))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """The conv stem: ``(B, 3, S, S) -> (B, S / stride, S / stride, C)`` channels last."""

    def __init__(self, config: HieraEncoderConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            3,
            config.embed_dim,
            kernel_size=config.patch_kernel_size,
            stride=config.patch_stride,
            padding=config.patch_padding,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the image.

        Parameters
        ----------
        x
            ``(B, 3, S, S)`` normalised image.

        Returns
        -------
        torch.Tensor
            ``(B, S / stride, S / stride, embed_dim)``.
        """
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The Hiera trunk: ``(B, 3, S, S)`` -> one ``(B, C_i, H_i, W_i)`` map per stage, finest first."""

    def __init__(self, config: HieraEncoderConfig) -> None:
        super().__init__()
        if len(config.stages) != len(config.window_spec):
            raise ValueError("HieraEncoderConfig needs one window size per stage")
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.window_pos_embed_bkg_spatial_size))
        first_window = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, first_window, first_window))

        ends = [sum(config.stages[: i + 1]) - 1 for i in range(len(config.stages))]
        self.stage_ends = tuple(ends)
        pooling_blocks = {end + 1 for end in ends[:-1][: config.q_pool]}
        dim, heads, stage = config.embed_dim, config.num_heads, 0
        blocks = []
        for index in range(sum(config.stages)):
            # The first block of a stage still uses the previous stage's window (it sees the larger grid).
            window = 0 if index in config.global_att_blocks else config.window_spec[stage]
            dim_out = dim
            if index - 1 in ends:
                dim_out, heads, stage = int(dim * config.dim_mul), int(heads * config.head_mul), stage + 1
            q_stride = config.q_stride if index in pooling_blocks else None
            blocks.append(HieraBlock(dim, dim_out, heads, config.mlp_ratio, q_stride, window))
            dim = dim_out
        self.blocks = nn.ModuleList(blocks)

    def position_embedding(self, size: tuple[int, int]) -> torch.Tensor:
        """``(1, H, W, C)``: the background table resized (bicubic) to ``size`` plus the window table tiled.

        Parameters
        ----------
        size
            ``(H, W)`` of the token grid after the stem; multiples of the first window size.

        Returns
        -------
        torch.Tensor
            The absolute position embedding, channels last.
        """
        height, width = size
        window = self.pos_embed_window
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        tiled = window.tile(1, 1, height // window.shape[-2], width // window.shape[-1])
        return (background + tiled).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output.

        Parameters
        ----------
        x
            ``(B, 3, S, S)`` normalised image.

        Returns
        -------
        list of torch.Tensor
            One ``(B, C_i, S / (4 * 2^i), S / (4 * 2^i))`` map per stage ``i``, finest first.
        """
        x = self.patch_embed(x)
        x = x + self.position_embedding(x.shape[1:3])
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
