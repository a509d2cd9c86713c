"""SAM's plain-ViT image encoder (vit_b / vit_l / vit_h).

A ``(B, 3, S, S)`` normalised image is cut into ``patch_size`` patches, run through
``depth`` transformer blocks (windowed attention, except the blocks listed in
``global_attn_indexes`` which attend over the whole grid), and projected by a conv
neck to ``(B, prompt_embed_dim, S // patch_size, S // patch_size)``.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with
the decomposed relative-position bias passed as an additive mask, so the fused CPU /
GPU kernels are used; the result equals the explicit softmax(QK^T + bias)V of the
reference in fp32. Parameter names follow the released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import SamConfig, ViTEncoderConfig
from napari_sam.model.layers import LayerNorm2d, MLPBlock

# The released checkpoints use this epsilon for every LayerNorm in the ViT blocks.
_BLOCK_NORM_EPS = 1e-6


def relative_position_table(query_size: int, key_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Look up a learned relative-position embedding for every (query, key) pair on one axis.

    Parameters
    ----------
    query_size
        Number of query positions along the axis.
    key_size
        Number of key positions along the axis.
    rel_pos
        ``(L, head_dim)`` learned embedding, one row per relative offset.
        When ``L != 2 * max(query_size, key_size) - 1`` (a model used at another
        size than it was trained on) it is linearly resampled to that length.

    Returns
    -------
    torch.Tensor
        ``(query_size, key_size, head_dim)`` embeddings, entry ``[i, j]`` for the offset ``i - j``.
    """
    num_offsets = 2 * max(query_size, key_size) - 1
    if rel_pos.shape[0] != num_offsets:
        # Resample along the offset axis: (L, D) -> (1, D, L) -> (1, D, num_offsets) -> (num_offsets, D).
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=num_offsets, mode="linear").squeeze(0).t()

    # When query and key grids differ in length, stretch the shorter one so offsets span the table.
    query_stretch = max(key_size / query_size, 1.0)
    key_stretch = max(query_size / key_size, 1.0)
    query_coords = torch.arange(query_size, device=rel_pos.device)[:, None] * query_stretch
    key_coords = torch.arange(key_size, device=rel_pos.device)[None, :] * key_stretch
    offsets = query_coords - key_coords + (key_size - 1) * key_stretch
    return rel_pos[offsets.long()]


def partition_windows(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a ``(B, H, W, C)`` token grid into ``(B * n_windows, window_size, window_size, C)``.

    The grid is zero-padded at the bottom/right to a multiple of ``window_size``;
    returns the windows and the padded ``(H, W)``.

    Parameters
    ----------
    x
        ``(B, H, W, C)`` tokens, channels last.
    window_size
        Side of the square windows, in tokens.

    Returns
    -------
    windows : torch.Tensor
        ``(B * n_windows, window_size, window_size, C)``, windows in row-major order per image.
    padded_hw : tuple of int
        ``(H, W)`` after padding, for :func:`merge_windows`.
    """
    batch, height, width, channels = x.shape
    pad_h = -height % window_size
    pad_w = -width % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def merge_windows(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], original_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: back to ``(B, H, W, C)`` with the padding cropped.

    Parameters
    ----------
    windows
        ``(B * n_windows, window_size, window_size, C)``, as :func:`partition_windows` cut them.
    window_size
        Side of the windows, in tokens.
    padded_hw
        The padded ``(H, W)`` that :func:`partition_windows` returned.
    original_hw
        ``(H, W)`` of the grid before padding.

    Returns
    -------
    torch.Tensor
        ``(B, H, W, C)``.
    """
    padded_h, padded_w = padded_hw
    height, width = original_hw
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: ``(B, 3, S, S) -> (B, S/p, S/p, D)`` (channels last)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project each ``p x p`` patch to a ``D``-vector.

        Parameters
        ----------
        x
            ``(B, 3, S, S)`` normalised image.

        Returns
        -------
        torch.Tensor
            ``(B, S / p, S / p, D)`` patch tokens, channels last.
        """
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, D)`` grid with decomposed relative positions.

    ``rel_pos_h`` / ``rel_pos_w`` hold one ``head_dim`` vector per relative offset along
    rows / columns; ``grid_size`` is the grid they are sized for (the window, or the
    whole embedding grid for global blocks).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size[1] - 1, head_dim))

    def relative_position_terms(self, q: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two factors of the relative-position bias, contiguous, in ``q``'s dtype.

        bias[(qy, qx), (ky, kx)] = bias_h[qy, qx, ky] + bias_w[qy, qx, kx] with
        bias_h = q . rel_h[qy - ky] and bias_w = q . rel_w[qx - kx]; the query is not
        scaled here, exactly as in the reference.

        Parameters
        ----------
        q
            ``(B, heads, H*W, hd)`` queries, tokens in row-major order of the grid.
        height, width
            ``H`` and ``W`` of the token grid.

        Returns
        -------
        bias_h : torch.Tensor
            ``(B, heads, H, W, H)``: query row, query column, key row.
        bias_w : torch.Tensor
            ``(B, heads, H, W, W)``: query row, query column, key column.
        """
        batch, heads, _, head_dim = q.shape
        table_h = relative_position_table(height, height, self.rel_pos_h).to(q.dtype)  # (H, H, hd)
        table_w = relative_position_table(width, width, self.rel_pos_w).to(q.dtype)  # (W, W, hd)
        q_grid = q.reshape(batch, heads, height, width, head_dim)
        # einsum hands back permuted views; contiguous factors make the broadcast sum below
        # write its (N, N) bias in one pass instead of a strided write plus a copy
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, table_h).contiguous()
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, table_w).contiguous()
        return bias_h, bias_w

    def relative_position_bias(self, q: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Additive attention bias ``(B, heads, H*W, H*W)`` in ``q``'s dtype, from queries ``(B, heads, H*W, hd)``.

        The whole bias at once (see :meth:`relative_position_terms`); ``forward`` builds
        it a few query rows at a time instead.

        Parameters
        ----------
        q
            ``(B, heads, H*W, hd)`` queries, tokens in row-major order of the grid.
        height, width
            ``H`` and ``W`` of the token grid.

        Returns
        -------
        torch.Tensor
            ``(B, heads, H*W, H*W)`` bias, rows indexed by query, columns by key.
        """
        bias_h, bias_w = self.relative_position_terms(q, height, width)
        batch, heads = q.shape[:2]
        bias = bias_h[..., :, None] + bias_w[..., None, :]  # (B, heads, H, W, kH, kW)
        return bias.reshape(batch, heads, height * width, height * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention among all tokens of each grid.

        Parameters
        ----------
        x
            ``(B, H, W, D)`` tokens, channels last (``B`` counts windows for windowed blocks).

        Returns
        -------
        torch.Tensor
            ``(B, H, W, D)``.
        """
        batch, height, width, dim = x.shape
        tokens = height * width
        # (B, N, 3, heads, hd) -> (3, B, heads, N, hd)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias_h, bias_w = self.relative_position_terms(q, height, width)
        out = attention_with_decomposed_bias(q, k, v, bias_h, bias_w)  # (B, heads, N, hd)
        out = out.transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj(out)


# Bytes of the additive bias materialised per attention call on a CPU. Measured on a 2-core
# EPYC (32 MiB L3), ViT-B global block in bf16: the whole (12, 4096, 4096) bias at once
# (384 MiB) took 2.6 s, 2 query rows of the grid at a time (12 MiB; the budget allows 16) 1.5 s, 8 rows 1.7 s,
# chunks split by head 2.4-15 s; the bias is written and read while it is still in cache.
CPU_BIAS_CHUNK_BYTES = 16 << 20


def attention_with_decomposed_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_h: torch.Tensor,
    bias_w: torch.Tensor,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias) v with bias[(qy, qx), (ky, kx)] = bias_h[.., qy, qx, ky] + bias_w[.., qy, qx, kx].

    Runs ``scaled_dot_product_attention`` (fused kernels) with the bias as an additive
    mask, built for a band of query rows at a time so that on a CPU it stays in cache;
    on other devices, where memory is fast, the whole bias at once.

    Parameters
    ----------
    q, k, v
        ``(B, heads, H*W, hd)``, tokens in row-major order of an ``H x W`` grid.
    bias_h, bias_w
        ``(B, heads, H, W, H)`` and ``(B, heads, H, W, W)`` from
        :meth:`Attention.relative_position_terms`.
    chunk_bytes
        Largest bias per kernel call; None: :data:`CPU_BIAS_CHUNK_BYTES` on a CPU,
        unlimited elsewhere.

    Returns
    -------
    torch.Tensor
        ``(B, heads, H*W, hd)``.
    """
    batch, heads, height, width, _ = bias_h.shape
    tokens = height * width
    if chunk_bytes is None:
        chunk_bytes = CPU_BIAS_CHUNK_BYTES if q.device.type == "cpu" else 1 << 62
    bytes_per_row = batch * heads * width * tokens * q.element_size()
    rows = max(1, min(height, chunk_bytes // max(bytes_per_row, 1)))
    bands = -(-height // rows)
    rows = -(-height // bands)  # bands of equal height where possible
    if bands == 1:
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).view(batch, heads, tokens, tokens)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    # sliced views of strided q/k/v send each call down a slower path (measured 3.7 s against 2.3 s)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    # inference reuses one bias buffer and one output; training (fine-tuning on a CPU) needs autograd's own tensors
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, bias_h, bias_w))
    buffer = None if training else torch.empty(batch, heads, rows, width, height, width, dtype=q.dtype, device=q.device)
    outputs = []
    for row0 in range(0, height, rows):
        row1 = min(row0 + rows, height)
        band_h, band_w = bias_h[:, :, row0:row1, :, :, None], bias_w[:, :, row0:row1, :, None, :]
        if buffer is not None and row1 - row0 == rows:
            bias = torch.add(band_h, band_w, out=buffer)
        else:
            bias = band_h + band_w
        band = slice(row0 * width, row1 * width)
        outputs.append(F.scaled_dot_product_attention(
            q[:, :, band], k, v, attn_mask=bias.reshape(batch, heads, (row1 - row0) * width, tokens)
        ))
    return torch.cat(outputs, dim=2)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size == 0`` means global attention."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        attention_grid = (window_size, window_size) if window_size > 0 else grid_size
        self.attn = Attention(dim, num_heads, attention_grid)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, D) -> (B, H, W, D)``.

        Parameters
        ----------
        x
            ``(B, H, W, D)`` tokens, channels last (the whole embedding grid).

        Returns
        -------
        torch.Tensor
            ``(B, H, W, D)``.
        """
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            grid_hw = (x.shape[1], x.shape[2])
            windows, padded_hw = partition_windows(x, self.window_size)
            x = merge_windows(self.attn(windows), self.window_size, padded_hw, grid_hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM ViT encoder: ``(B, 3, S, S)`` normalised image -> ``(B, prompt_embed_dim, S/p, S/p)``.

    ``S = config.img_size``, ``p = config.encoder.patch_size``.
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        encoder = config.encoder
        if not isinstance(encoder, ViTEncoderConfig):
            raise TypeError(f"ImageEncoderViT needs a ViTEncoderConfig, got {type(encoder).__name__}")
        self.img_size = config.img_size
        grid = config.img_size // encoder.patch_size
        dim = encoder.embed_dim
        out_chans = config.prompt_embed_dim

        self.patch_embed = PatchEmbed(encoder.patch_size, dim)
        # Absolute position embedding for the training grid, channels last.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                encoder.num_heads,
                encoder.mlp_ratio,
                window_size=0 if index in encoder.global_attn_indexes else encoder.window_size,
                grid_size=(grid, grid),
            )
            for index in range(encoder.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of images.

        Parameters
        ----------
        x
            ``(B, 3, S, S)`` image, normalised and padded to the model's input size
            ``S = config.img_size``.

        Returns
        -------
        torch.Tensor
            ``(B, prompt_embed_dim, S / p, S / p)`` image embedding.

        Raises
        ------
        ValueError
            The image is not ``S x S``.
        """
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"image encoder expects (B, 3, {self.img_size}, {self.img_size}) input, got {tuple(x.shape)}"
            )
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
