"""SAM 2's memory: the memory encoder (frame features + mask -> memory) and memory attention.

* ``MemoryEncoder``: the predicted mask (as a scaled sigmoid) is downsampled by strided
  convs to the embedding grid, added to the projected image embedding, refined by
  ConvNeXt blocks and projected to ``memory_dim`` channels; positions by fixed sines.
* ``MemoryAttention``: the current frame's embedding (tokens, ``prompt_embed_dim``) attends
  to itself and then to the memories of other frames (spatial memories plus object-pointer
  tokens), with rotary position encoding (RoPE) on the grid tokens.

Parameter names follow the released sam2.1 checkpoints (``memory_encoder.*``,
``memory_attention.*``). Token sequences are batch first: ``(B, N, C)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import Sam2Config
from napari_sam.model.layers import LayerNorm2d
from napari_sam.model.sam2.image_encoder import sine_position_encoding


class MaskDownSampler(nn.Module):
    """``(B, 1, S, S)`` mask -> ``(B, C, S / total_stride, ...)``: strided conv + LayerNorm2d + GELU steps, then 1x1."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        stride = config.mask_downsampler_stride
        steps = round(math.log(config.mask_downsampler_total_stride, stride))
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(steps):
            out_channels = channels * stride**2
            layers += [
                nn.Conv2d(
                    channels,
                    out_channels,
                    kernel_size=config.mask_downsampler_kernel_size,
                    stride=stride,
                    padding=config.mask_downsampler_kernel_size // 2,
                ),
                LayerNorm2d(out_channels),
                nn.GELU(),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, config.prompt_embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsample mask probabilities.

        Parameters
        ----------
        x
            ``(B, 1, S, S)``.

        Returns
        -------
        torch.Tensor
            ``(B, prompt_embed_dim, E, E)``.
        """
        return self.encoder(x)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm, pointwise MLP (x4, GELU), layer scale ``gamma``, residual."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block.

        Parameters
        ----------
        x
            ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, C, H, W)``.
        """
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of :class:`ConvNeXtBlock` (``fuser.layers.N``)."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNeXtBlock(config.prompt_embed_dim, config.memory_fuser_kernel_size)
            for _ in range(config.memory_fuser_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks in order.

        Parameters
        ----------
        x
            ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, C, H, W)``.
        """
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """A frame's memory: ``(image embedding, mask logits)`` -> ``(memory (B, D, E, E), positions (B, D, E, E))``."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.mask_downsampler = MaskDownSampler(config)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(config)
        self.out_proj = nn.Conv2d(dim, config.memory_dim, kernel_size=1)

    def forward(self, pixel_features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one memory per batch item.

        Parameters
        ----------
        pixel_features
            ``(B, C, E, E)`` the frame's image embedding (without the no-memory embedding).
        masks
            ``(B, 1, S, S)`` mask probabilities in [0, 1] (already scaled by the caller).

        Returns
        -------
        memory : torch.Tensor
            ``(B, memory_dim, E, E)``.
        positions : torch.Tensor
            ``(B, memory_dim, E, E)`` fixed sine encoding of the grid.
        """
        x = self.pix_feat_proj(pixel_features) + self.mask_downsampler(masks)
        x = self.out_proj(self.fuser(x))
        positions = sine_position_encoding(x.shape[1], tuple(x.shape[-2:]), x.device).to(x.dtype)
        return x, positions.unsqueeze(0).expand(x.shape[0], -1, -1, -1)


def rotary_angles(head_dim: int, size: tuple[int, int], theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Axial RoPE angles ``(H * W, head_dim / 2)``: the first half rotates by column, the second by row.

    Parameters
    ----------
    head_dim
        Channels per head (a multiple of 4).
    size
        ``(H, W)`` of the token grid (tokens row-major).
    theta
        RoPE base.
    device
        Where the angles are made.

    Returns
    -------
    torch.Tensor
        float32 angles, one per (token, channel pair).
    """
    height, width = size
    frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim)
    index = torch.arange(height * width, device=device, dtype=torch.float32)
    cols, rows = index % width, torch.div(index, width, rounding_mode="floor")
    return torch.cat([torch.outer(cols, frequencies), torch.outer(rows, frequencies)], dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` ``(..., N, D)`` by ``angles`` ``(N, D / 2)`` (computed in fp32).

    Parameters
    ----------
    x
        Queries or keys, heads split: ``(B, heads, N, D)``.
    angles
        From :func:`rotary_angles`, tiled to ``N`` rows.

    Returns
    -------
    torch.Tensor
        ``x`` rotated, in ``x``'s dtype.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = angles.cos(), angles.sin()
    real = pairs[..., 0] * cos - pairs[..., 1] * sin
    imag = pairs[..., 0] * sin + pairs[..., 1] * cos
    return torch.stack([real, imag], dim=-1).flatten(-2).to(x.dtype)


class RotaryAttention(nn.Module):
    """Multi-head attention with RoPE on the queries and the first ``N_k - exclude`` keys.

    Queries are a square grid of ``N_q`` tokens; keys may be several such grids (memories of
    several frames, rotated alike) followed by ``exclude`` tokens with no position (object pointers).
    """

    def __init__(self, dim: int, num_heads: int, theta: float, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.theta = theta
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, exclude: int = 0) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        q
            ``(B, N_q, dim)``, ``N_q`` a square grid.
        k, v
            ``(B, N_k, kv_dim)``; the first ``N_k - exclude`` tokens are whole grids of ``N_q``.
        exclude
            Trailing key tokens without rotary encoding.

        Returns
        -------
        torch.Tensor
            ``(B, N_q, dim)``.
        """
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        side = int(round(math.sqrt(q.shape[-2])))
        angles = rotary_angles(q.shape[-1], (side, side), self.theta, q.device)
        q = apply_rotary(q, angles)
        rotated = k.shape[-2] - exclude
        if rotated > 0:
            repeats = rotated // angles.shape[0]
            k = torch.cat([apply_rotary(k[:, :, :rotated], angles.repeat(repeats, 1)), k[:, :, rotated:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: self-attention (RoPE), cross-attention to memory (RoPE, keys + positions), ReLU MLP."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        heads, theta = config.memory_attention_heads, config.rope_theta
        self.self_attn = RotaryAttention(dim, heads, theta)
        self.cross_attn_image = RotaryAttention(dim, heads, theta, kv_dim=config.memory_dim)
        self.linear1 = nn.Linear(dim, config.memory_attention_mlp_dim)
        self.linear2 = nn.Linear(config.memory_attention_mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_pointer_tokens: int
    ) -> torch.Tensor:
        """One layer.

        Parameters
        ----------
        x
            ``(B, HW, C)`` current-frame tokens.
        memory
            ``(B, M, memory_dim)`` memory tokens (pointer tokens last).
        memory_pos
            ``(B, M, memory_dim)`` their position (and time) encodings.
        num_pointer_tokens
            How many trailing memory tokens are object pointers (no RoPE).

        Returns
        -------
        torch.Tensor
            ``(B, HW, C)``.
        """
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        y = self.norm2(x)
        x = x + self.cross_attn_image(y, memory + memory_pos, memory, exclude=num_pointer_tokens)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    """Conditions the current frame's embedding on memories of other frames (``layers.N``, final ``norm``)."""

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(config) for _ in range(config.memory_attention_layers))
        self.norm = nn.LayerNorm(config.prompt_embed_dim)

    def forward(
        self,
        current: torch.Tensor,
        current_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int = 0,
    ) -> torch.Tensor:
        """The memory-conditioned embedding tokens.

        Parameters
        ----------
        current
            ``(B, HW, C)`` image-embedding tokens of the current frame (row-major grid).
        current_pos
            ``(B, HW, C)`` their sine position encoding (added at a tenth of its size).
        memory
            ``(B, M, memory_dim)``: spatial memories of other frames, then pointer tokens.
        memory_pos
            ``(B, M, memory_dim)``.
        num_pointer_tokens
            Trailing tokens of ``memory`` that are object pointers.

        Returns
        -------
        torch.Tensor
            ``(B, HW, C)``.
        """
        x = current + 0.1 * current_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_pointer_tokens)
        return self.norm(x)
