"""SAM's prompt encoder: points, boxes and mask logits -> sparse and dense embeddings.

Coordinates are in the model's INPUT frame: ``(x, y)`` pixels of the resized,
padded ``img_size x img_size`` image (x = column, y = row). Parameter names follow
the released checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam.model.config import NEGATIVE, PADDING, POSITIVE, SamConfig
from napari_sam.model.layers import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature encoding of 2D positions.

    A fixed Gaussian matrix ``(2, num_feats)`` maps a position in ``[0, 1]^2`` to
    ``2 * num_feats`` features ``[sin, cos]`` of its projections.
    """

    def __init__(self, num_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_feats))

    def encode_unit_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` (x, y) in ``[0, 1]`` -> ``(..., 2 * num_feats)``.

        Parameters
        ----------
        coords
            ``(..., 2)`` positions as (x, y) fractions of the image width and height.

        Returns
        -------
        torch.Tensor
            ``(..., 2 * num_feats)``: sines then cosines, in the dtype of the Gaussian matrix.
        """
        # Follow the model's dtype, so a model cast to bf16/fp16 accepts fp32 pixel coordinates.
        coords = coords.to(self.positional_encoding_gaussian_matrix.dtype)
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an ``(h, w)`` grid: ``(2 * num_feats, h, w)``.

        Parameters
        ----------
        size
            ``(h, w)``: rows and columns of the grid (the image-embedding grid).

        Returns
        -------
        torch.Tensor
            ``(2 * num_feats, h, w)``, channels first.
        """
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(
            [xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1
        )  # (h, w, 2) as (x, y)
        return self.encode_unit_coords(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``(B, N, 2)`` (x, y) pixel coordinates in an ``(h, w)`` image -> ``(B, N, 2 * num_feats)``.

        Parameters
        ----------
        coords
            ``(B, N, 2)`` (x, y) positions in pixels (x = column, y = row), any float or int dtype.
        image_size
            ``(h, w)`` of the image the coordinates refer to (the model's input, ``img_size`` square).

        Returns
        -------
        torch.Tensor
            ``(B, N, 2 * num_feats)``.
        """
        height, width = image_size
        size_xy = torch.tensor([width, height], dtype=torch.float32, device=coords.device)
        return self.encode_unit_coords(coords.float() / size_xy)


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    ``forward(points, boxes, masks)``:

    * ``points``: ``(coords (B, N, 2) float (x, y) input-frame pixels, labels (B, N) int)``
      with labels 1 positive, 0 negative, -1 padding; or ``None``.
    * ``boxes``: ``(B, 4)`` ``x0, y0, x1, y1`` input-frame pixels, or ``None``.
    * ``masks``: ``(B, 1, 4E, 4E)`` mask logits (e.g. a previous low-res prediction), or ``None``.

    Returns ``sparse (B, n, C)`` (points first, then two box corners) and
    ``dense (B, C, E, E)``. When points come without a box, a padding point is
    appended, as the model was trained that way.
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.embed_dim = config.prompt_embed_dim
        self.input_image_size = (config.img_size, config.img_size)
        self.image_embedding_size = (config.embedding_size, config.embedding_size)
        self.mask_input_size = (config.low_res_mask_size, config.low_res_mask_size)
        self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)

        # 0: negative point, 1: positive point, 2: box top-left corner, 3: box bottom-right corner.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, self.embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, self.embed_dim)

        hidden = config.mask_in_chans
        # Two stride-2 convs bring the 4E mask down to the E embedding grid.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden // 4, kernel_size=2, stride=2),
            LayerNorm2d(hidden // 4),
            nn.GELU(),
            nn.Conv2d(hidden // 4, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, self.embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, self.embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: ``(1, C, E, E)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``(B, N, 2)``, ``(B, N)`` -> ``(B, N (+1 if pad), C)``."""
        coords = coords + 0.5  # pixel index -> pixel centre
        if pad:
            batch = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((batch, 1), PADDING)], dim=1)
        embedding = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        is_padding = labels == PADDING
        # Padding points carry no position, only their learned embedding; other labels
        # (anything but -1/0/1) keep the bare positional encoding, as in the reference.
        embedding = torch.where(is_padding, self.not_a_point_embed.weight, embedding)
        embedding = embedding + torch.where(labels == NEGATIVE, self.point_embeddings[0].weight, 0.0)
        embedding = embedding + torch.where(labels == POSITIVE, self.point_embeddings[1].weight, 0.0)
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` -> ``(B, 2, C)``: the two corners, each with its corner embedding."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embeddings = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_embeddings

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 4E, 4E)`` logits -> ``(B, C, E, E)``."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed one batch of prompts; any of the three may be None.

        Parameters
        ----------
        points
            ``(coords, labels)``: ``(B, N, 2)`` float (x, y) pixel indices in the input frame
            (the resized, padded ``img_size`` square; ``+ 0.5`` is added here to reach the
            pixel centre) and ``(B, N)`` int labels, 1 positive, 0 negative, -1 padding.
        boxes
            ``(B, 4)`` ``x0, y0, x1, y1`` in the same frame.
        masks
            ``(B, 1, 4E, 4E)`` mask logits (e.g. a previous low-res prediction).

        Returns
        -------
        sparse : torch.Tensor
            ``(B, n, C)``: the points (plus one padding point when there is no box), then the
            two box corners. ``B`` is taken from points, else boxes, else masks, else 1.
        dense : torch.Tensor
            ``(B, C, E, E)``: the downscaled mask, or the learned no-mask embedding everywhere.
        """
        batch = self._batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        sparse_parts = [torch.empty(batch, 0, self.embed_dim, device=weight.device, dtype=weight.dtype)]
        if points is not None:
            coords, labels = points
            sparse_parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse_parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(sparse_parts, dim=1)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
