"""SAM 2's prompt encoder and mask decoder (``sam_prompt_encoder`` / ``sam_mask_decoder``).

Both extend SAM's networks (:mod:`napari_sam.model.sam`), whose parameters they share:

* the prompt encoder takes a box as two corner *points* (labels 2 and 3) placed before the
  clicks, and always appends a padding point, as SAM 2 was trained;
* the mask decoder adds an object-score token (is the object present at all?), adds two
  high-resolution FPN levels into its upscaling path (after 1x1 convs ``conv_s0`` /
  ``conv_s1``), squashes the IoU head with a sigmoid, returns the mask token that becomes
  the object pointer in video memory, and, when one mask is asked for, falls back to the
  best multimask output if the single output is unstable.

Coordinates are SAM's INPUT frame, ``(x, y)`` pixels of the ``img_size`` square.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.model.config import Sam2Config
from napari_sam.model.layers import MLP
from napari_sam.model.sam.mask_decoder import MaskDecoder, TwoWayTransformer
from napari_sam.model.sam.prompt_encoder import PromptEncoder

BOX_TOP_LEFT = 2  # point labels of a box's corners
BOX_BOTTOM_RIGHT = 3


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder with SAM 2's handling of boxes (see the module docstring).

    ``forward(points, boxes, masks)`` takes the same arguments as SAM's.
    """

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``(B, N, 2)``, ``(B, N)`` -> ``(B, N (+1), C)``; labels 2 / 3 get the box-corner embeddings."""
        embedding = super()._embed_points(coords, labels, pad)
        if pad:
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        labels = labels[..., None]
        embedding = embedding + torch.where(labels == BOX_TOP_LEFT, self.point_embeddings[2].weight, 0.0)
        return embedding + torch.where(labels == BOX_BOTTOM_RIGHT, self.point_embeddings[3].weight, 0.0)

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
            ``(coords (B, N, 2) float (x, y), labels (B, N) int)``: 1 positive, 0 negative, -1 padding.
        boxes
            ``(B, 4)`` ``x0, y0, x1, y1``, input frame.
        masks
            ``(B, 1, 4E, 4E)`` mask logits.

        Returns
        -------
        sparse : torch.Tensor
            ``(B, n, C)``: box corners, then the points, then one padding point.
        dense : torch.Tensor
            ``(B, C, E, E)``.
        """
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=boxes.device)
            corner_labels = corner_labels.expand(corners.shape[0], 2)
            if points is None:
                points = (corners, corner_labels)
            else:
                coords, labels = points
                points = (torch.cat([corners, coords], dim=1), torch.cat([corner_labels.to(labels.dtype), labels], dim=1))
        return super().forward(points, None, masks)


class Sam2TwoWayTransformer(TwoWayTransformer):
    """SAM's two-way transformer with SAM 2's token MLP layout (``mlp.layers.0/1``, ReLU)."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__(depth, embedding_dim, num_heads, mlp_dim)
        for layer in self.layers:
            layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)


class Sam2MaskDecoder(MaskDecoder):
    """SAM 2's mask decoder (see the module docstring).

    ``forward(image_embeddings, image_pe, sparse, dense, multimask_output, high_res_features)``
    -> ``masks (B, K, 4E, 4E), iou (B, K), mask_tokens (B, K', C), object_score_logits (B, 1)``.
    """

    def __init__(self, config: Sam2Config) -> None:
        super().__init__(config)
        dim = config.prompt_embed_dim
        self.transformer = Sam2TwoWayTransformer(
            config.decoder_depth, dim, config.decoder_num_heads, config.decoder_mlp_dim
        )
        self.iou_prediction_head.sigmoid_output = True  # SAM 2's IoU head predicts in [0, 1]
        self.obj_score_token = nn.Embedding(1, dim)
        self.pred_obj_score_head = MLP(dim, dim, 1, num_layers=3)
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.stability_delta = config.dynamic_multimask_stability_delta
        self.stability_thresh = config.dynamic_multimask_stability_thresh

    def project_high_res(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's view of the two finest FPN levels: ``conv_s0`` / ``conv_s1`` applied.

        Parameters
        ----------
        levels
            The image encoder's kept FPN levels, finest first (at least two).

        Returns
        -------
        tuple of torch.Tensor
            ``(B, C/8, 4E, 4E)`` and ``(B, C/4, 2E, 2E)``.
        """
        return self.conv_s0(levels[0]), self.conv_s1(levels[1])

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(B, 2 + T + n, C)`` (object score, IoU, T masks, prompts) and image ``(B, E*E, C)``.

        Parameters
        ----------
        image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
            As for :meth:`MaskDecoder.run_transformer`.

        Returns
        -------
        tokens : torch.Tensor
            ``(B, 2 + T + n, C)``.
        image_out : torch.Tensor
            ``(B, E*E, C)``.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        for name, tensor in (("image_embeddings", image_embeddings), ("dense_prompt_embeddings", dense_prompt_embeddings)):
            if tensor.shape[0] not in (1, batch):
                raise ValueError(f"{name} batch {tensor.shape[0]} must be 1 or the prompt batch {batch}")
        return self.transformer(image_embeddings + dense_prompt_embeddings, image_pe, tokens)

    def masks_from(
        self,
        tokens: torch.Tensor,
        image_out: torch.Tensor,
        size: tuple[int, int],
        high_res_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Mask logits ``(B, T, 4E, 4E)``; the high-resolution features join the upscaling.

        Parameters
        ----------
        tokens, image_out, size
            As for :meth:`MaskDecoder.masks_from` (tokens from this class's :meth:`run_transformer`).
        high_res_features
            ``(B or 1, C/8, 4E, 4E)`` and ``(B or 1, C/4, 2E, 2E)`` from :meth:`project_high_res`.

        Returns
        -------
        torch.Tensor
            ``(B, T, 4E, 4E)``.

        Raises
        ------
        ValueError
            ``high_res_features`` is missing: SAM 2 masks are wrong without them.
        """
        if high_res_features is None:
            raise ValueError("SAM 2's mask decoder needs the image's high-resolution features (high_res_features=)")
        batch, _, channels = image_out.shape
        feat_s0, feat_s1 = high_res_features
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        src = image_out.transpose(1, 2).reshape(batch, channels, *size)
        upscaled = act1(norm1(deconv1(src) + feat_s1))
        upscaled = act2(deconv2(upscaled) + feat_s0)
        return self._hypernetwork_masks(tokens[:, 2 : 2 + self.num_mask_tokens], upscaled)  # row 0: object score

    def iou_from(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predicted IoU ``(B, T)`` in [0, 1] (row 1 of the tokens is the IoU token).

        Parameters
        ----------
        tokens
            ``(B, 2 + T + n, C)`` from :meth:`run_transformer`.

        Returns
        -------
        torch.Tensor
            ``(B, T)``.
        """
        return self.iou_prediction_head(tokens[:, 1])

    def object_score_from(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logit ``(B, 1)`` that the object is present (> 0) or occluded / absent.

        Parameters
        ----------
        tokens
            ``(B, 2 + T + n, C)`` from :meth:`run_transformer`.

        Returns
        -------
        torch.Tensor
            ``(B, 1)``.
        """
        return self.pred_obj_score_head(tokens[:, 0])

    def _stable_single_or_best(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask output where it is stable, else the multimask output with the best IoU."""
        best = iou[:, 1:].argmax(dim=1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks, best_iou = masks[:, 1:][rows, best][:, None], iou[:, 1:][rows, best][:, None]
        single = masks[:, :1].flatten(-2)
        inner = (single > self.stability_delta).sum(-1).float()
        outer = (single > -self.stability_delta).sum(-1).float()
        stable = torch.where(outer > 0, inner / outer, 1.0) >= self.stability_thresh  # (B, 1)
        return (
            torch.where(stable[..., None, None], masks[:, :1], best_masks),
            torch.where(stable, iou[:, :1], best_iou),
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask logits, IoUs, the object-pointer token(s) and the object score for B prompt sets.

        Parameters
        ----------
        image_embeddings
            ``(B or 1, C, E, E)`` image embedding.
        image_pe
            ``(1, C, E, E)``.
        sparse_prompt_embeddings
            ``(B, n, C)``.
        dense_prompt_embeddings
            ``(B or 1, C, E, E)``.
        multimask_output
            The ``num_multimask_outputs`` masks, or one (stable single output, else the best multimask one).
        high_res_features
            From :meth:`project_high_res` (required).

        Returns
        -------
        masks : torch.Tensor
            ``(B, K, 4E, 4E)`` logits.
        iou_predictions : torch.Tensor
            ``(B, K)``.
        pointer_tokens : torch.Tensor
            ``(B, K, C)`` multimask tokens with ``multimask_output``, else ``(B, 1, C)`` single-mask token.
        object_score_logits : torch.Tensor
            ``(B, 1)``.
        """
        tokens, image_out = self.run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        masks = self.masks_from(tokens, image_out, image_embeddings.shape[-2:], high_res_features)
        iou = self.iou_from(tokens)
        mask_tokens = tokens[:, 2 : 2 + self.num_mask_tokens]
        if multimask_output:
            masks, iou, pointer = masks[:, 1:], iou[:, 1:], mask_tokens[:, 1:]
        else:
            masks, iou = self._stable_single_or_best(masks, iou) if not self.training else (masks[:, :1], iou[:, :1])
            pointer = mask_tokens[:, :1]
        return masks, iou, pointer, self.object_score_from(tokens)
