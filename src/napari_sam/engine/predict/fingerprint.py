"""Fingerprints that tie saved embeddings to the exact image and image encoder they came from.

A saved embedding cache is only valid for the pixels it was computed from and for
the weights of the image encoder that computed it. Shape, dtype and a model path
are not enough: two images of one shape, or a checkpoint replaced at the same
path, would silently reuse wrong embeddings. The digests here are cheap next to
one embedding (see ``image_fingerprint``) and do not depend on the device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from napari_sam.engine.predict.protocol import PredictorProtocol

FULL_HASH_BYTES = 1 << 30  # images up to 1 GiB are hashed whole (~0.6 s); larger ones by a strided sample
_SAMPLES_PER_TENSOR = 4096  # weights sampled per encoder tensor (a fine-tune changes nearly all of them)
_BLOCK_BYTES = 64 << 20  # read (and copy to contiguous memory) at most this much at a time
# Tensors outside ``image_encoder`` that SAM 2's cached embedding depends on: the no-memory embedding
# added to the image embedding, and the decoder's 1x1 convs that make the high-res features.
_EMBEDDING_EXTRAS = ("no_mem_embed", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")


def _hasher():
    # sha1 is not used for security here; it is the fastest hashlib digest on x86 (SHA-NI)
    return hashlib.sha1(usedforsecurity=False)


def _sample_step(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> int:
    """One stride for every axis so that the strided sample holds at most ~``max_bytes``."""
    nbytes = math.prod(shape) * itemsize
    if nbytes <= max_bytes:
        return 1
    return math.ceil((nbytes / max_bytes) ** (1 / len(shape)))


def _blocks(data: Any, step: int) -> Iterator[np.ndarray]:
    """Contiguous numpy blocks of ``data[::step, ::step, ...]``, slab by slab along the first axis."""
    shape = tuple(data.shape)
    inner = (slice(None, None, step),) * (len(shape) - 1)
    row_bytes = max(1, math.prod(math.ceil(n / step) for n in shape[1:]) * np.dtype(data.dtype).itemsize)
    rows = max(1, _BLOCK_BYTES // row_bytes) * step
    for start in range(0, shape[0], rows):
        yield np.ascontiguousarray(np.asarray(data[(slice(start, start + rows, step), *inner)]))


def image_fingerprint(data: Any, max_bytes: int = FULL_HASH_BYTES) -> str:
    """A digest of an image's pixels, shape and dtype.

    Parameters
    ----------
    data
        Any array-like (numpy, dask, zarr) of any dimensionality: the whole image
        or stack the embeddings belong to, in its own axis order.
    max_bytes
        Images up to this size are hashed whole: any changed pixel changes the
        digest. Larger ones are hashed from a strided sample (the same stride on
        every axis, starting at index 0) plus the full shape, so the cost stays
        bounded; a change between sampled pixels then goes unnoticed.

    Returns
    -------
    str
        A hex digest; equal for equal content whatever the memory layout.
    """
    dtype = np.dtype(data.dtype)
    shape = tuple(int(n) for n in data.shape)
    step = _sample_step(shape, dtype.itemsize, max_bytes) if shape else 1
    digest = _hasher()
    digest.update(repr((shape, dtype.str, step)).encode())
    if shape and math.prod(shape):
        for block in _blocks(data, step):
            digest.update(memoryview(block).cast("B"))
    return digest.hexdigest()


def _tensor_sample_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bits of up to ``_SAMPLES_PER_TENSOR`` evenly spaced elements (exact, device-independent)."""
    import torch

    flat = tensor.detach().reshape(-1)
    if flat.numel() > _SAMPLES_PER_TENSOR:
        index = torch.linspace(0, flat.numel() - 1, _SAMPLES_PER_TENSOR, device=flat.device).long()
        flat = flat[index]
    return flat.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A digest of every tensor of ``module``: name, shape, dtype and a strided sample of its values.

    Parameters
    ----------
    module
        Any module; every entry of its ``state_dict()`` (parameters and buffers) is
        hashed, up to ``_SAMPLES_PER_TENSOR`` evenly spaced values per tensor.

    Returns
    -------
    str
        A hex digest, equal on every device for equal weights.
    """
    digest = _hasher()
    for name, tensor in _state_tensors(module.state_dict().items()):
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(_tensor_sample_bytes(tensor.dequantize() if tensor.is_quantized else tensor))
    return digest.hexdigest()


def _state_tensors(items) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` in name order; an int8-quantised layer's packed entries (tuples of tensors,
    a dtype) are unpacked so a quantised model has a digest of its own."""
    import torch

    for name, value in sorted(items, key=lambda item: item[0]):
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, (tuple, list)):
            yield from _state_tensors((f"{name}.{i}", v) for i, v in enumerate(value))
        elif value is not None:  # e.g. the packed layer's dtype
            yield name, torch.tensor(list(str(value).encode()), dtype=torch.uint8)


def _input_signature(model: torch.nn.Module) -> str:
    """What a model does to an image before its encoder: input size, normalisation, preprocessing."""
    config = getattr(model, "config", None)
    return repr(
        (
            getattr(config, "img_size", None),
            tuple(getattr(config, "pixel_mean", ())),
            tuple(getattr(config, "pixel_std", ())),
            getattr(model, "preprocessing", "sam"),
        )
    )


def _embedding_extras(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model's tensors named in ``_EMBEDDING_EXTRAS`` (none for SAM)."""
    import torch

    for name in _EMBEDDING_EXTRAS:
        owner, leaf = model, name
        while "." in leaf and owner is not None:  # plain attributes: no error for a model without them
            head, leaf = leaf.split(".", 1)
            owner = getattr(owner, head, None)
        target = getattr(owner, leaf, None)
        if isinstance(target, torch.nn.Module):
            for key, tensor in sorted(target.state_dict().items()):
                yield f"{name}.{key}", tensor
        elif isinstance(target, torch.Tensor):
            yield name, target


def encoder_fingerprint(model: torch.nn.Module) -> str:
    """A digest of what a SAM image embedding depends on: the image encoder and its input.

    Parameters
    ----------
    model
        A SAM-like module. Its ``image_encoder`` (the whole model if it has none)
        is fingerprinted with :func:`weights_fingerprint`, together with the input
        size, normalisation and ``preprocessing`` of the model. For SAM 2 also the
        tensors outside the encoder that the cached embedding depends on
        (``no_mem_embed``, the decoder's ``conv_s0`` / ``conv_s1`` making the
        high-resolution features). The rest of the prompt encoder and mask decoder
        is left out on purpose: embeddings stay valid for a decoder-only fine-tune.

    Returns
    -------
    str
        A hex digest. Cost: one pass over the encoder's tensors (tens of ms for
        ViT-B); callers memoise it (``Predictor.encoder_fingerprint``).
    """
    digest = _hasher()
    digest.update(_input_signature(model).encode())
    digest.update(weights_fingerprint(getattr(model, "image_encoder", model)).encode())
    for name, tensor in _embedding_extras(model):  # nothing for SAM: its digests stay as they were
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(_tensor_sample_bytes(tensor))
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """``"<config name>:<digest>"`` of the whole model (encoder, prompt encoder, decoder) and its input.

    What automatic segmentation's labels depend on; it tells two checkpoints of one
    architecture apart (stored with a resumable ``segment_everything`` output).

    Parameters
    ----------
    model
        A SAM-like module; all of its weights are fingerprinted with
        :func:`weights_fingerprint`, with its input size, normalisation and
        ``preprocessing``.

    Returns
    -------
    str
        ``config.name`` (the class name without a config), a colon and the first 16
        hex digits of the digest.
    """
    digest = _hasher()
    digest.update(_input_signature(model).encode())
    digest.update(weights_fingerprint(model).encode())
    name = getattr(getattr(model, "config", None), "name", type(model).__name__)
    return f"{name}:{digest.hexdigest()[:16]}"


def cache_fingerprint(
    image: Any,
    predictor: PredictorProtocol,
    *,
    intensity_range: tuple | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a saved embedding cache must match, for :class:`~napari_sam.engine.EmbeddingCache`.

    Parameters
    ----------
    image
        The whole image or stack the cached planes are taken from (any array-like).
    predictor
        The predictor computing the embeddings; its ``encoder_fingerprint()`` and
        ``config.name`` are recorded.
    intensity_range
        The (low, high) scaling used for every plane, or None for the per-plane default.
    **extra
        More JSON-able entries to match, e.g. ``model=<path or zoo name>``, ``rgb=True``.

    Returns
    -------
    dict
        JSON-able entries; a store saved under another dict is refused on load.
    """
    fingerprint: dict[str, Any] = {
        "architecture": predictor.config.name,
        "encoder": predictor.encoder_fingerprint(),
        "image_shape": [int(s) for s in image.shape],
        "image_dtype": str(np.dtype(image.dtype)),
        "pixels": image_fingerprint(image),
        "intensity_range": None if intensity_range is None else [np.asarray(v).tolist() for v in intensity_range],
    }
    fingerprint.update(extra)
    return fingerprint
