"""SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding.

Output tokens (1 IoU token + ``num_multimask_outputs + 1`` mask tokens) are
prepended to the sparse prompt embeddings; the transformer alternates token
self-attention, token->image and image->token cross-attention; the mask tokens
then become per-mask hypernetwork weights applied to the 4x upscaled image
features. Parameter names follow the released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.config import SamConfig
from napari_sam.model.layers import MLP, LayerNorm2d, MLPBlock

# The cross-attentions project to half the width: cheaper attention over the 4096 image tokens.
_CROSS_ATTENTION_DOWNSAMPLE = 2


class Attention(nn.Module):
    """Multi-head attention whose inner width is ``embedding_dim // downsample_rate``.

    ``q (B, Nq, D), k (B, Nk, D), v (B, Nk, D) -> (B, Nq, D)``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, heads * hd) -> (B, heads, N, hd)``."""
        *batch, tokens, width = x.shape
        return x.reshape(*batch, tokens, self.num_heads, width // self.num_heads).transpose(-3, -2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A batch of 1 on either side broadcasts against the other's batch B (projected once).

        Parameters
        ----------
        q
            ``(B or 1, Nq, D)`` queries.
        k
            ``(B or 1, Nk, D)`` keys.
        v
            ``(B or 1, Nk, D)`` values, with the batch of ``k``.

        Returns
        -------
        torch.Tensor
            ``(B, Nq, D)``.
        """
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        if q.shape[0] != k.shape[0]:
            batch = max(q.shape[0], k.shape[0])
            q, k, v = (x.expand(batch, *x.shape[1:]) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Nq, hd)
        out = out.transpose(-3, -2).flatten(-2)
        return self.out_proj(out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention.

    Post-norm residual layout. The first block of the transformer skips the query
    positional encoding in its self-attention and replaces (not adds to) the tokens.
    """

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, _CROSS_ATTENTION_DOWNSAMPLE)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, _CROSS_ATTENTION_DOWNSAMPLE)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries ``(B, Nt, D)`` tokens, keys ``(B, HW, D)`` image; returns both updated.

        Parameters
        ----------
        queries
            ``(B, Nt, D)`` prompt and output tokens.
        keys
            ``(B or 1, HW, D)`` image features, tokens in row-major order of the embedding grid.
        query_pe
            ``(B, Nt, D)`` added to the queries before each attention (the original tokens).
        key_pe
            ``(B or 1, HW, D)`` positional encoding of the image grid, added to the keys.

        Returns
        -------
        queries : torch.Tensor
            ``(B, Nt, D)``.
        keys : torch.Tensor
            ``(B, HW, D)``.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        keys_with_pe = keys + key_pe
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, keys_with_pe, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys_with_pe, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token->image attention."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=index == 0)
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, _CROSS_ATTENTION_DOWNSAMPLE)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image ``(B or 1, D, h, w)``, its encoding ``(B or 1, D, h, w)``, tokens ``(B, Nt, D)``.

        Returns tokens ``(B, Nt, D)`` and image features ``(B, h*w, D)``. An image batch of
        1 is shared by all B token sets: its prompt-independent projections in the first
        block are computed once, not B times.

        Parameters
        ----------
        image_embedding
            ``(B or 1, D, h, w)`` image features (image embedding plus dense prompt embedding).
        image_pe
            ``(B or 1, D, h, w)`` positional encoding of the grid.
        point_embedding
            ``(B, Nt, D)`` output tokens followed by the sparse prompt embeddings.

        Returns
        -------
        queries : torch.Tensor
            ``(B, Nt, D)`` tokens.
        keys : torch.Tensor
            ``(B, h*w, D)`` image features, row-major over the grid.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
        q = queries + point_embedding
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, keys + key_pe, keys))
        return queries, keys


class MaskDecoder(nn.Module):
    """Predicts mask logits and IoU scores from an image embedding and prompt embeddings.

    ``forward(image_embeddings (B_img, C, E, E), image_pe (1, C, E, E), sparse (B, n, C),
    dense (B, C, E, E), multimask_output) -> masks (B, K, 4E, 4E), iou (B, K)``,
    K = ``num_multimask_outputs`` if ``multimask_output`` else 1. ``B_img`` is 1 (one
    image shared by all B prompt sets, as in the reference) or B (one image per prompt set).
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.transformer_dim = dim
        self.num_multimask_outputs = config.num_multimask_outputs
        self.num_mask_tokens = config.num_multimask_outputs + 1  # token 0: the single-mask output
        self.transformer = TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
        )
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, num_layers=3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits and predicted IoUs for B prompt sets.

        Parameters
        ----------
        image_embeddings
            ``(B_img, C, E, E)`` image embedding, ``B_img`` 1 (shared) or B.
        image_pe
            ``(1, C, E, E)`` positional encoding (``PromptEncoder.get_dense_pe()``).
        sparse_prompt_embeddings
            ``(B, n, C)`` from the prompt encoder.
        dense_prompt_embeddings
            ``(B or 1, C, E, E)`` from the prompt encoder.
        multimask_output
            True: the ``num_multimask_outputs`` ambiguity-aware masks; False: the single-mask output.

        Returns
        -------
        masks : torch.Tensor
            ``(B, K, 4E, 4E)`` logits in the low-res frame of the padded input (threshold 0).
        iou_predictions : torch.Tensor
            ``(B, K)``.

        Raises
        ------
        ValueError
            ``image_embeddings`` or ``dense_prompt_embeddings`` has a batch other than 1 or B.
        """
        masks, iou_predictions = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_predictions[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` outputs: masks ``(B, T, 4E, 4E)``, IoU ``(B, T)``.

        Output 0 is the single-mask output, 1.. the multimask ones.

        Parameters
        ----------
        image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            As for :meth:`forward`.

        Returns
        -------
        masks : torch.Tensor
            ``(B, T, 4E, 4E)`` logits, ``T = num_mask_tokens``.
        iou_predictions : torch.Tensor
            ``(B, T)``.

        Raises
        ------
        ValueError
            ``image_embeddings`` or ``dense_prompt_embeddings`` has a batch other than 1 or B.
        """
        tokens, image_out = self.run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self.masks_from(tokens, image_out, image_embeddings.shape[-2:]), self.iou_from(tokens)

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(B, 1 + T + n, C)`` and image features ``(B, E*E, C)`` after the two-way transformer.

        ``image_embeddings`` and ``dense_prompt_embeddings`` may have a batch of 1 (shared
        by all B prompt sets) or B.

        Parameters
        ----------
        image_embeddings
            ``(B or 1, C, E, E)`` image embedding.
        image_pe
            ``(1, C, E, E)`` positional encoding of the grid.
        sparse_prompt_embeddings
            ``(B, n, C)``; ``B`` is the prompt batch.
        dense_prompt_embeddings
            ``(B or 1, C, E, E)``.

        Returns
        -------
        tokens : torch.Tensor
            ``(B, 1 + T + n, C)``: IoU token, ``T`` mask tokens, prompt tokens.
        image_out : torch.Tensor
            ``(B, E*E, C)`` image features, row-major over the grid.

        Raises
        ------
        ValueError
            ``image_embeddings`` or ``dense_prompt_embeddings`` has a batch other than 1 or B.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)
        for name, tensor in (("image_embeddings", image_embeddings), ("dense_prompt_embeddings", dense_prompt_embeddings)):
            if tensor.shape[0] not in (1, batch):
                raise ValueError(f"{name} batch {tensor.shape[0]} must be 1 or the prompt batch {batch}")
        # broadcasting adds the shared image to every prompt set's dense embedding
        src = image_embeddings + dense_prompt_embeddings
        return self.transformer(src, image_pe, tokens)

    def masks_from(self, tokens: torch.Tensor, image_out: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Mask logits ``(B, T, 4E, 4E)`` from ``run_transformer``'s outputs; ``size`` is (E, E).

        Parameters
        ----------
        tokens
            ``(B, 1 + T + n, C)`` tokens from :meth:`run_transformer`.
        image_out
            ``(B, E*E, C)`` image features from :meth:`run_transformer`.
        size
            ``(E, E)``: the embedding grid, to fold ``image_out`` back into a map.

        Returns
        -------
        torch.Tensor
            ``(B, T, 4E, 4E)`` logits, one map per mask token.
        """
        batch, _, channels = image_out.shape
        mask_tokens_out = tokens[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self.output_upscaling(image_out.transpose(1, 2).reshape(batch, channels, *size))
        return self._hypernetwork_masks(mask_tokens_out, upscaled)

    def _hypernetwork_masks(self, mask_tokens: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
        """``(B, T, H, W)``: each mask token's MLP weights ``(B, T, C')`` applied to ``upscaled`` ``(B, C', H, W)``."""
        batch = upscaled.shape[0]
        hyper_weights = torch.stack(
            [mlp(mask_tokens[:, index]) for index, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, T, C/8)
        _, up_channels, up_height, up_width = upscaled.shape
        return (hyper_weights @ upscaled.reshape(batch, up_channels, up_height * up_width)).reshape(
            batch, self.num_mask_tokens, up_height, up_width
        )

    def iou_from(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predicted IoU ``(B, T)`` of every mask token, from ``run_transformer``'s tokens.

        Parameters
        ----------
        tokens
            ``(B, 1 + T + n, C)`` tokens from :meth:`run_transformer` (row 0 is the IoU token).

        Returns
        -------
        torch.Tensor
            ``(B, T)``.
        """
        return self.iou_prediction_head(tokens[:, 0])
