"""MobileSAM's TinyViT image encoder (``vit_t``).

Layout, input to output::

    (B, 3, S, S) image, normalised
      patch_embed   two 3x3/2 conv-BN layers                    -> (B, d0, S/4, S/4)
      layers.0      MBConv blocks, then a /2 conv downsample    -> (B, d1, S/8, S/8)
      layers.1      windowed-attention blocks, /2 downsample    -> (B, d2, S/16, S/16)
      layers.2      windowed-attention blocks, /1 downsample    -> (B, d3, S/16, S/16)
      layers.3      windowed-attention blocks, no downsample
      neck          1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d
    (B, prompt_embed_dim, S/16, S/16) image embedding

The downsample that leads into the last stage keeps the resolution (MobileSAM
changed TinyViT that way to reach SAM's stride of 16). Parameter and buffer
names (``patch_embed.seq``, ``layers.N.blocks.M``, ``attn.qkv``, ``local_conv``,
``norm_head``/``head``, ``neck``) follow the released ``mobile_sam.pt`` so its
``image_encoder.*`` state dict loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import SamConfig, TinyViTEncoderConfig
from napari_sam.model.layers import LayerNorm2d

IMAGE_CHANNELS = 3  # RGB input
STEM_STRIDE = 4  # the conv stem halves the resolution twice


class ConvBN(nn.Sequential):
    """Bias-free ``Conv2d`` (child ``c``) followed by ``BatchNorm2d`` (child ``bn``).

    ``(B, in_channels, H, W) -> (B, out_channels, H', W')``. ``bn_weight_init`` 0
    makes a residual branch start out as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class ConvStem(nn.Module):
    """Two stride-2 3x3 conv-BN layers with GELU between: ``(B, 3, H, W) -> (B, dim, H/4, W/4)``."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        # Indices 0 and 2 carry the weights (``seq.0.*``, ``seq.2.*``) as in the checkpoint.
        self.seq = nn.Sequential(
            ConvBN(in_channels, dim // 2, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            ConvBN(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Downsample the image 4x.

        Parameters
        ----------
        image
            ``(B, 3, H, W)`` normalised image.

        Returns
        -------
        torch.Tensor
            ``(B, dim, H/4, W/4)`` (sizes rounded up at each stride-2 conv).
        """
        return self.seq(image)


class MBConvBlock(nn.Module):
    """Inverted-residual block: 1x1 expand -> 3x3 depthwise -> 1x1 project, plus skip.

    ``(B, dim, H, W) -> (B, dim, H, W)``.
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual inverted-bottleneck update.

        Parameters
        ----------
        x
            ``(B, dim, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, dim, H, W)``.
        """
        branch = self.act(self.conv1(x))
        branch = self.act(self.conv2(branch))
        return self.act(x + self.conv3(branch))


class ConvDownsample(nn.Module):
    """Stage transition ("PatchMerging"): 1x1 conv -> 3x3 depthwise conv (stride 1 or 2) -> 1x1 conv.

    ``(B, in_dim, H, W) -> (B, out_dim, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel_size=3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Change the width and (for stride 2) halve the resolution.

        Parameters
        ----------
        x
            ``(B, in_dim, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, out_dim, ceil(H / stride), ceil(W / stride))``.
        """
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def window_offset_index(window_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Index into a per-offset bias table for every pair of tokens in a window.

    Tokens are numbered row-major in a ``window_size`` square window. Pair ``(i, j)``
    gets ``|row_i - row_j| * window_size + |col_i - col_j|``: one learned bias per
    absolute offset, shared by symmetric offsets. Returns ``(N, N)`` long,
    ``N = window_size ** 2``.

    Parameters
    ----------
    window_size
        Side of the square window, in tokens.
    device
        Where to create the index (None: the current default device).

    Returns
    -------
    torch.Tensor
        ``(N, N)`` int64 indices into ``range(N)``.
    """
    rows, cols = torch.meshgrid(
        torch.arange(window_size, device=device), torch.arange(window_size, device=device), indexing="ij"
    )
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    row_offset = (rows[:, None] - rows[None, :]).abs()
    col_offset = (cols[:, None] - cols[None, :]).abs()
    return row_offset * window_size + col_offset


def _real_default_device() -> torch.device:
    """The default device, or CPU while building under ``torch.device("meta")``.

    The bias index is pure geometry; keeping it real on a meta-built model means it
    survives ``load_state_dict(..., assign=True)`` (it is not in the state dict).
    """
    device = torch.get_default_device()
    return torch.device("cpu") if device.type == "meta" else device


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned relative-offset bias.

    ``(B, N, dim) -> (B, N, dim)`` with ``N = window_size ** 2``. The input is layer
    normalised first (``norm``). ``qkv`` packs, per head, that head's q, k and v
    side by side (the checkpoint's layout); ``attention_biases`` is
    ``(num_heads, window_size ** 2)``, one value per absolute offset.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # Not persistent: it is derived from window_size, and the checkpoint does not hold it.
        self.register_buffer(
            "attention_bias_idxs", window_offset_index(window_size, _real_default_device()), persistent=False
        )

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        # ``to_empty`` (and any move) would leave uninitialised memory in the index;
        # rebuild it from geometry on whatever device it landed.
        device = self.attention_bias_idxs.device
        if device.type != "meta":
            self.attention_bias_idxs = window_offset_index(self.window_size, device)
        return module

    def attention_bias(self) -> torch.Tensor:
        """Additive attention mask ``(num_heads, N, N)`` gathered from ``attention_biases``."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention among the tokens of each window.

        Parameters
        ----------
        tokens
            ``(B, N, dim)``: ``B`` windows of ``N = window_size ** 2`` tokens each, row-major.

        Returns
        -------
        torch.Tensor
            ``(B, N, dim)``.
        """
        batch, num_tokens, dim = tokens.shape
        qkv = self.qkv(self.norm(tokens)).view(batch, num_tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)  # each (B, heads, N, head_dim)
        bias = self.attention_bias().to(q.dtype)  # SDPA wants the mask in the query dtype (autocast)
        # a 4D mask (an expanded view, no copy) takes the fused CPU kernel; a 3D one falls back to
        # the slow math path (measured 3-5x slower for these window sizes)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(batch, -1, -1, -1))
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))


class FeedForward(nn.Module):
    """Pre-norm MLP on the last axis: ``norm -> fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``norm -> fc1 -> GELU -> fc2`` to the last axis.

        Parameters
        ----------
        x
            ``(..., dim)`` tokens.

        Returns
        -------
        torch.Tensor
            ``(..., dim)``.
        """
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention -> 3x3 depthwise conv-BN -> MLP, on a channels-last map.

    ``(B, H, W, dim) -> (B, H, W, dim)``. The map is zero-padded at the bottom/right
    to whole windows; as in the trained model, padded tokens take part in attention
    (they are not masked), and are cropped afterwards.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(
            dim, dim, kernel_size=local_conv_size, padding=local_conv_size // 2, groups=dim
        )

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        size = self.window_size
        pad_h, pad_w = -height % size, -width % size
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        rows, cols = (height + pad_h) // size, (width + pad_w) // size
        windows = (
            x.reshape(batch, rows, size, cols, size, dim).transpose(2, 3).reshape(batch * rows * cols, size * size, dim)
        )
        out = self.attn(windows)
        out = out.reshape(batch, rows, cols, size, size, dim).transpose(2, 3).reshape(
            batch, rows * size, cols * size, dim
        )
        return out[:, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual windowed attention, then the local conv and the residual MLP.

        Parameters
        ----------
        x
            ``(B, H, W, dim)`` channels-last map.

        Returns
        -------
        torch.Tensor
            ``(B, H, W, dim)``.
        """
        x = x + self._windowed_attention(x)
        # A permuted channels-last tensor is a valid NCHW tensor in channels_last memory
        # format, so the conv needs no copy.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """First stage: MBConv ``blocks`` then ``downsample``. ``(B, C, H, W) -> (B, C', H', W')``."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: ConvDownsample | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConvBlock(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the MBConv blocks, then the downsample (if any).

        Parameters
        ----------
        x
            ``(B, C, H, W)`` channels-first map.

        Returns
        -------
        torch.Tensor
            ``(B, C', H', W')``: the downsample's output, or ``x``'s shape without one.
        """
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT ``blocks`` then optional ``downsample``. ``(B, C, H, W) -> (B, C', H', W')``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: ConvDownsample | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the attention blocks (channels last), then the downsample (if any).

        Parameters
        ----------
        x
            ``(B, C, H, W)`` channels-first map.

        Returns
        -------
        torch.Tensor
            ``(B, C', H', W')`` channels first: the downsample's output, or ``x``'s shape without one.
        """
        x = x.permute(0, 2, 3, 1)  # blocks work channels-last: linear layers act on the last axis
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: ``(B, 3, S, S) -> (B, prompt_embed_dim, S / stride, S / stride)``.

    Sizes come from ``config.encoder`` (a :class:`TinyViTEncoderConfig`) and
    ``config.prompt_embed_dim``. ``norm_head``/``head`` are the unused ImageNet
    classifier, kept so the released checkpoint loads unchanged.
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        encoder = config.encoder
        if not isinstance(encoder, TinyViTEncoderConfig):
            raise TypeError(f"TinyViT needs a TinyViTEncoderConfig, got {type(encoder).__name__}")
        dims, depths = encoder.embed_dims, encoder.depths
        num_stages = len(dims)
        if num_stages < 2 or not (len(depths) == len(encoder.num_heads) == len(encoder.window_sizes) == num_stages):
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2 stages)")
        # Every downsample halves the map except the one into the last stage.
        self.stride = STEM_STRIDE * 2 ** (num_stages - 2)
        if self.stride != encoder.stride:
            raise ValueError(f"{num_stages} stages give stride {self.stride}, config says {encoder.stride}")
        self.img_size = config.img_size

        self.patch_embed = ConvStem(IMAGE_CHANNELS, dims[0])
        self.layers = nn.ModuleList()
        for index in range(num_stages):
            is_last = index == num_stages - 1
            downsample = None
            if not is_last:
                stride = 1 if index == num_stages - 2 else 2
                downsample = ConvDownsample(dims[index], dims[index + 1], stride)
            if index == 0:
                stage = ConvStage(dims[0], depths[0], encoder.mbconv_expand_ratio, downsample)
            else:
                stage = AttentionStage(
                    dims[index],
                    depths[index],
                    encoder.num_heads[index],
                    encoder.window_sizes[index],
                    encoder.mlp_ratio,
                    encoder.local_conv_size,
                    downsample,
                )
            self.layers.append(stage)

        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], encoder.num_classes) if encoder.num_classes > 0 else nn.Identity()
        self.apply(_init_linear)

        out_dim = config.prompt_embed_dim
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], out_dim, kernel_size=1, bias=False),
            LayerNorm2d(out_dim),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_dim),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (B, 3, H, W), normalised -> embedding (B, prompt_embed_dim, H / stride, W / stride).

        Parameters
        ----------
        image
            ``(B, 3, H, W)`` normalised image; the model is trained on ``img_size``
            squares (the size is not checked here, unlike the ViT encoder).

        Returns
        -------
        torch.Tensor
            ``(B, prompt_embed_dim, H / stride, W / stride)`` image embedding, ``stride`` 16
            for MobileSAM.
        """
        x = self.patch_embed(image)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x)


def _init_linear(module: nn.Module) -> None:
    """TinyViT's init for fresh (non-checkpoint) weights: small truncated-normal linear layers."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
