"""Prompted segmentation of one 2D image: SAM's predictor in napari's coordinates.

Frames: prompts come in the ORIGINAL image's pixel frame as napari gives them,
points (row, col) and boxes (min_row, min_col, max_row, max_col), pixel centres at
integers. SAM works in the INPUT frame (x, y) of the resized image; the conversion
lives here and nowhere else. Masks come back at the original (H, W).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.errors import InputError
from napari_sam.engine.predict.device import autocast, quantize_int8, resolve_precision, select_device
from napari_sam.engine.predict.fingerprint import encoder_fingerprint
from napari_sam.engine.predict.preprocessing import (
    image_to_model_input,
    model_input_size,
    to_uint8_rgb,
)


@dataclass(frozen=True)
class ImageEmbedding:
    """SAM's image embedding of one 2D image.

    ``features``: (1, C, E, E) float32 on the predictor's device;
    ``original_size``: (H, W) of the image; ``input_size``: (h, w) after resizing
    the longest side to the model's input size (before padding; SAM 2: the whole
    ``(S, S)``); ``high_res_features``: SAM 2's two finer decoder features
    ((1, C/8, 4E, 4E), (1, C/4, 2E, 2E)), empty for SAM.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res_features: tuple[torch.Tensor, ...] = ()

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain arrays for caching on disk (``high_res_0``, ``high_res_1``, ... for SAM 2)."""
        arrays = {
            "features": self.features.float().cpu().numpy(),
            "original_size": np.asarray(self.original_size),
            "input_size": np.asarray(self.input_size),
        }
        for level, feature in enumerate(self.high_res_features):
            arrays[f"high_res_{level}"] = feature.float().cpu().numpy()
        return arrays

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> ImageEmbedding:
        """The embedding back from :meth:`to_numpy`'s arrays.

        Parameters
        ----------
        arrays
            ``features`` (1, C, E, E), ``original_size`` (2,) and ``input_size`` (2,);
            SAM 2 also ``high_res_0``, ``high_res_1``.
        device
            Where the features tensor is placed.

        Returns
        -------
        ImageEmbedding
            float32 features on ``device``; sizes as tuples of int.
        """
        high_res = []
        while f"high_res_{len(high_res)}" in arrays:
            feature = np.asarray(arrays[f"high_res_{len(high_res)}"])
            high_res.append(torch.as_tensor(feature, dtype=torch.float32, device=device))
        return cls(
            torch.as_tensor(np.asarray(arrays["features"]), dtype=torch.float32, device=device),
            tuple(int(v) for v in arrays["original_size"]),
            tuple(int(v) for v in arrays["input_size"]),
            tuple(high_res),
        )


class Predictor:
    """SAM predictor: one image embedding at a time, any number of prompt sets.

    Satisfies :class:`~napari_sam.engine.predict.protocol.PredictorProtocol`, the
    interface the napari side uses.

    Parameters
    ----------
    model
        A SAM module (``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``config``),
        e.g. from :func:`napari_sam.model.load_model`. Moved to ``device``, put in eval mode.
    device
        ``"cuda"``, ``"mps"``, ``"cpu"``, a ``torch.device``, or None for the best
        available (CUDA > MPS > CPU).
    precision
        ``auto`` (bf16 on CUDA and on CPUs with native bf16, else fp32), ``fp32``,
        ``bf16``, ``fp16`` (GPU only) or ``int8`` (CPU only: a copy of the model with its
        linear layers quantised, see :func:`~napari_sam.engine.predict.device.quantize_int8`;
        measured speed and mask IoU against fp32 in ``docs/performance.md``).
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None, precision: str = "auto"):
        self.device = select_device(device)
        self.precision = precision
        if precision == "int8":  # opt-in: a quantised copy; the caller's model is left as it is
            if self.device.type != "cpu":
                raise InputError(f"precision 'int8' runs on the CPU only; on {self.device.type} use 'bf16' or 'auto'.")
            model = quantize_int8(model.to(self.device))
        self.autocast_dtype = None if precision == "int8" else resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        # how the checkpoint expects its input ("sam", or "medsam" for MedSAM-style fine-tunes)
        self.preprocessing = getattr(model, "preprocessing", "sam")
        self._embedding: ImageEmbedding | None = None
        self._encoder_fingerprint: str | None = None
        # SAM 2 models bring their own input transform and encoder entry point (high-res features too)
        self._sam2 = callable(getattr(model, "encode_image", None))

    def encoder_fingerprint(self) -> str:
        """Digest of the image encoder's weights and input settings (computed once, then memoised).

        Two predictors give equal digests exactly when their embeddings can be
        exchanged; see :func:`napari_sam.engine.predict.fingerprint.encoder_fingerprint`.
        The model must not be changed in place after the first call.
        """
        if self._encoder_fingerprint is None:
            self._encoder_fingerprint = encoder_fingerprint(self.model)
        return self._encoder_fingerprint

    # ----------------------------------------------------------------- image
    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this predictor's precision (a no-op for fp32)."""
        return autocast(self.device, self.autocast_dtype)

    @torch.inference_mode()
    def compute_embedding(self, image: Any, intensity_range: tuple | None = None) -> ImageEmbedding:
        """Embed a 2D image; does not change the predictor's state.

        Parameters
        ----------
        image
            (H, W) or (H, W, C) with C <= 4, any numeric dtype, (row, col) pixel frame.
            Channels-first (C, H, W) is refused with a hint (see ``validate_image``).
        intensity_range
            (low, high) intensities mapped to 0-255 (scalars or per channel); None:
            the image's own robust percentiles (uint8 and bool are used unchanged).

        Returns
        -------
        ImageEmbedding
            Features on this predictor's device, with the image's original and resized sizes.

        Raises
        ------
        InputError
            The image cannot be used (see :func:`~napari_sam.engine.predict.preprocessing.to_uint8_rgb`).
        """
        rgb = to_uint8_rgb(image, intensity_range)
        if self._sam2:
            x = self.model.normalize_input(torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None])
            with self.autocast():
                features, high_res = self.model.encode_image(x)
            size = self.config.img_size
            high_res = tuple(feature.float() for feature in high_res)
            return ImageEmbedding(features.float(), tuple(rgb.shape[:2]), (size, size), high_res)
        x = image_to_model_input(rgb, self.config, self.device, self.preprocessing)
        with self.autocast():
            features = self.model.image_encoder(x)
        input_size = model_input_size(rgb.shape[:2], self.config.img_size, self.preprocessing)
        return ImageEmbedding(features.float(), tuple(rgb.shape[:2]), input_size)

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use a (cached) embedding for the following predictions.

        Parameters
        ----------
        embedding
            From :meth:`compute_embedding` of a predictor with the same model
            architecture; another architecture's embedding is refused.

        Raises
        ------
        InputError
            The features' shape is not the one this model makes.
        """
        expected = (self.config.prompt_embed_dim, self.config.embedding_size, self.config.embedding_size)
        if tuple(embedding.features.shape[1:]) != expected:
            raise InputError(
                f"This embedding has shape {tuple(embedding.features.shape)}, but the model '{self.config.name}' "
                f"makes (1, {expected[0]}, {expected[1]}, {expected[2]}): it was computed with another model."
            )
        high_res_shapes = tuple(getattr(self.config, "high_res_shapes", ()))
        got = tuple(tuple(feature.shape[1:]) for feature in embedding.high_res_features)
        if got != high_res_shapes:
            raise InputError(
                f"This embedding's high-resolution features have shapes {list(got)}, but the model "
                f"'{self.config.name}' uses {list(high_res_shapes)}: it was computed with another model."
            )
        self._embedding = ImageEmbedding(
            embedding.features.to(self.device),
            embedding.original_size,
            embedding.input_size,
            tuple(feature.to(self.device) for feature in embedding.high_res_features),
        )

    def set_image(self, image: Any, intensity_range: tuple | None = None) -> None:
        """Embed ``image`` and keep it for :meth:`predict`. On error the previous image stays set.

        Parameters
        ----------
        image, intensity_range
            As for :meth:`compute_embedding`.

        Raises
        ------
        InputError
            As for :meth:`compute_embedding`.
        """
        self.set_embedding(self.compute_embedding(image, intensity_range))

    def reset_image(self) -> None:
        """Forget the current image's embedding."""
        self._embedding = None

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The embedding :meth:`predict` uses, or None before an image is set."""
        return self._embedding

    # --------------------------------------------------------------- prompts
    def _require_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise InputError("No image is set: call set_image(image) (or set_embedding) before predict().")
        return self._embedding

    def _points_to_input_frame(self, points, labels, emb: ImageEmbedding, batched: bool):
        """Validate (.., N, 2) (row, col) points and (.., N) labels; return SAM (x, y) input-frame tensors."""
        if points is None and labels is None:
            return None
        if points is None or labels is None:
            raise InputError("Points and labels go together: pass both (labels: 1 positive, 0 negative).")
        points = np.asarray(points, dtype=np.float64)
        labels = np.asarray(labels)
        lead = 2 if batched else 1
        if points.ndim != lead + 1 or points.shape[-1] != 2:
            want = "(B, N, 2)" if batched else "(N, 2)"
            raise InputError(f"Points must have shape {want} as (row, col); got {points.shape}.")
        if labels.shape != points.shape[:-1]:
            raise InputError(
                f"Got {points.shape[-2]} points but labels of shape {labels.shape}: one label per point is needed."
            )
        if points.shape[-2] == 0:
            return None  # an empty set of points is no prompt; the caller decides whether others remain
        if not np.isfinite(points).all():
            raise InputError("Points contain NaN or infinite coordinates.")
        if not np.isin(labels, (0, 1)).all():
            raise InputError("Point labels must be 1 (positive) or 0 (negative).")
        h, w = emb.original_size
        inside = (points[..., 0] >= -0.5) & (points[..., 0] < h - 0.5) & (points[..., 1] >= -0.5) & (points[..., 1] < w - 0.5)
        if not inside.all():
            bad = points[~inside][0]
            raise InputError(
                f"Point (row={bad[0]:.1f}, col={bad[1]:.1f}) is outside the image of shape ({h}, {w}); "
                "remove it or click inside the image."
            )
        scale = np.array([emb.input_size[1] / w, emb.input_size[0] / h])
        xy = points[..., ::-1] * scale
        coords = torch.as_tensor(xy, dtype=torch.float32, device=self.device)
        labels_t = torch.as_tensor(labels.astype(np.int64), device=self.device)
        if not batched:
            coords, labels_t = coords[None], labels_t[None]
        return coords, labels_t

    def _box_to_input_frame(self, boxes, emb: ImageEmbedding, batched: bool):
        """Validate (.., 4) (min_row, min_col, max_row, max_col) boxes; return (B, 4) SAM x0,y0,x1,y1 tensor."""
        if boxes is None:
            return None
        boxes = np.asarray(boxes, dtype=np.float64)
        ok_ndim = boxes.ndim == 2 if batched else boxes.shape in ((4,), (1, 4))
        if not ok_ndim or boxes.shape[-1] != 4:
            shape = "(B, 4)" if batched else "(4,)"
            raise InputError(f"A box must have shape {shape} as (min_row, min_col, max_row, max_col); got {boxes.shape}.")
        boxes = boxes.reshape(-1, 4)
        if not np.isfinite(boxes).all():
            raise InputError("Box coordinates contain NaN or infinite values.")
        if (boxes[:, 0] > boxes[:, 2]).any() or (boxes[:, 1] > boxes[:, 3]).any():
            raise InputError(
                f"Box {boxes[(boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])][0].tolist()} has min > max; "
                "give (min_row, min_col, max_row, max_col)."
            )
        h, w = emb.original_size
        if ((boxes[:, 2] < -0.5) | (boxes[:, 0] > h - 0.5) | (boxes[:, 3] < -0.5) | (boxes[:, 1] > w - 0.5)).any():
            raise InputError(f"A box lies entirely outside the image of shape ({h}, {w}).")
        # a box drawn past the border means "up to the border"
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, h - 1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, w - 1)
        scale = np.array([emb.input_size[1] / w, emb.input_size[0] / h] * 2)
        xyxy = boxes[:, [1, 0, 3, 2]] * scale
        return torch.as_tensor(xyxy, dtype=torch.float32, device=self.device)

    def _mask_input(self, mask_input, batch: int, batched: bool):
        """Validate low-res mask logits ((1, L, L) or (B, 1, L, L)); return a (B, 1, L, L) tensor."""
        if mask_input is None:
            return None
        size = self.config.low_res_mask_size
        mask_input = np.asarray(mask_input, dtype=np.float32)
        if not np.isfinite(mask_input).all():
            # the decoder would turn them into NaN masks and scores
            raise InputError(
                "mask_input contains NaN or infinite values; pass the finite logits a previous predict returned."
            )
        m = torch.as_tensor(mask_input, device=self.device)
        if not batched and m.ndim == 2:
            m = m[None]
        want = (batch, 1, size, size) if batched else (1, size, size)
        if tuple(m.shape) != want:
            raise InputError(
                f"mask_input must be low-resolution logits of shape {want} (the logits a previous predict "
                f"returned); got {tuple(m.shape)}."
            )
        return m if batched else m[None]

    # ------------------------------------------------------------ prediction
    @torch.inference_mode()
    def _decode(self, emb: ImageEmbedding, points, boxes, masks, multimask: bool):
        """Run prompt encoder + decoder; return low-res logits (B, K, L, L) and scores (B, K) in fp32."""
        extra = {"high_res_features": emb.high_res_features} if emb.high_res_features else {}
        with self.autocast():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=emb.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                **extra,
            )[:2]  # SAM 2 also returns its object-pointer tokens and object score
        return low_res.float(), iou.float()

    def _returned_logits(self, low_res: torch.Tensor) -> np.ndarray:
        """Low-res logits as returned to the caller (SAM 2 clamps them, as its predictor does, for feedback)."""
        limit = getattr(self.model, "low_res_logit_limit", None)
        if limit is not None:
            low_res = low_res.clamp(-limit, limit)
        return low_res.cpu().numpy()

    def upscale_logits(self, low_res: torch.Tensor, emb: ImageEmbedding | None = None) -> torch.Tensor:
        """(B, K, L, L) low-res logits -> (B, K, H, W) logits at the original image size.

        Upsample to the padded input size, crop the padding, then resize to the
        original size, as the released models were trained to be used.

        Parameters
        ----------
        low_res
            Logits from the decoder (or :meth:`predict`'s third output as a tensor).
        emb
            The embedding they belong to; default: the current one.

        Returns
        -------
        torch.Tensor
            (B, K, H, W) logits, H, W = ``emb.original_size``.

        Raises
        ------
        InputError
            ``emb`` is None and no image is set.
        """
        emb = emb or self._require_embedding()
        if self._sam2:  # SAM 2 squashes the whole image into its input: one resize back, no padding to crop
            return F.interpolate(low_res, size=emb.original_size, mode="bilinear", align_corners=False)
        s = self.config.img_size
        h, w = emb.input_size
        x = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)[..., :h, :w]
        return F.interpolate(x, size=emb.original_size, mode="bilinear", align_corners=False)

    @staticmethod
    def _no_prompt_error(points: Any, alternatives: str) -> InputError:
        """The error for a call without a usable prompt; names an empty points array as the cause."""
        if points is not None and np.size(points) == 0:
            return InputError(
                f"Got an empty points array (no points) and no {alternatives}: SAM would segment without a prompt. "
                "Add at least one point, or give a box."
            )
        return InputError(f"Give at least one prompt: points with labels, or a {alternatives}.")

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment one object.

        Parameters
        ----------
        points
            (N, 2) (row, col) in the original image's pixel frame. An empty (0, 2)
            array counts as no points: then a box or ``mask_input`` is required.
        labels
            (N,) 1 positive / 0 negative, one per point.
        box
            (min_row, min_col, max_row, max_col); drawn past the border means up to it.
        mask_input
            (1, L, L) finite low-res logits from a previous call (L = ``config.low_res_mask_size``).
        multimask
            Three candidates (for an ambiguous single click) instead of one.

        Returns
        -------
        masks : np.ndarray
            (K, H, W) bool, K = 3 with ``multimask`` else 1, in SAM's order
            (use ``scores.argmax()`` for the best).
        scores : np.ndarray
            (K,) float32 predicted IoU.
        logits : np.ndarray
            (K, L, L) float32 low-res logits (feed one back as ``mask_input``).

        Raises
        ------
        InputError
            No image is set, no usable prompt is given, or a prompt is malformed
            (wrong shape, non-finite, a point outside the image, a box with
            min > max or entirely outside, labels other than 0/1).
        """
        emb = self._require_embedding()
        pts = self._points_to_input_frame(points, labels, emb, batched=False)
        boxes = self._box_to_input_frame(box, emb, batched=False)
        masks_in = self._mask_input(mask_input, 1, batched=False)
        if pts is None and boxes is None and masks_in is None:
            raise self._no_prompt_error(points, "box or mask_input")
        low_res, iou = self._decode(emb, pts, boxes, masks_in, multimask)
        with torch.inference_mode():
            masks = self.upscale_logits(low_res, emb) > 0.0
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), self._returned_logits(low_res[0])

    def predict_batch(
        self,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
        mask_input: Any = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment B objects in one decoder call.

        Parameters
        ----------
        points, labels
            (B, N, 2) (row, col) and (B, N) labels, N points per object; (B, 0, 2)
            counts as no points (then ``boxes`` are required).
        boxes
            (B, 4) (min_row, min_col, max_row, max_col).
        mask_input
            (B, 1, L, L) finite low-res logits.
        multimask
            Three candidates per object instead of one.

        Returns
        -------
        masks, scores, logits : np.ndarray
            (B, K, H, W) bool, (B, K) float32 and (B, K, L, L) float32.

        Raises
        ------
        InputError
            As for :meth:`predict`, and when points and boxes give different
            numbers of objects B.
        """
        emb = self._require_embedding()
        pts = self._points_to_input_frame(points, labels, emb, batched=True)
        box_t = self._box_to_input_frame(boxes, emb, batched=True)
        sizes = {t.shape[0] for t in (pts[0] if pts else None, box_t) if t is not None}
        if not sizes:
            raise self._no_prompt_error(points, "boxes")
        if points is not None and pts is None:  # empty points still say how many objects they are for
            sizes.add(np.shape(points)[0])
        if len(sizes) > 1:
            raise InputError(f"Points and boxes describe different numbers of objects: {sorted(sizes)}.")
        batch = sizes.pop()
        masks_in = self._mask_input(mask_input, batch, batched=True)
        low_res, iou = self._decode(emb, pts, box_t, masks_in, multimask)
        with torch.inference_mode():
            masks = self.upscale_logits(low_res, emb) > 0.0
        return masks.cpu().numpy(), iou.cpu().numpy(), self._returned_logits(low_res)
