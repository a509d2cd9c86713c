"""Deterministic weights and inputs shared by our tests and the reference-oracle scripts.

Imports only numpy and torch so that it loads both in our environment and in the
separate reference environment (``tools/make_golden.py``, ``benchmarks/``), by file path.
Every tensor is drawn from its own generator seeded from ``(seed, crc32(key))``, so the
value of a key never depends on which other keys exist or in which order they come:
our model and Meta's / MobileSAM's model (same state-dict keys) get identical weights
without committing any weight file.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping

import numpy as np
import torch

# Standard deviations chosen so a random network stays numerically sane (activations of
# order one through every block) yet every parameter visibly changes the output.
BIAS_STD = 0.05
NORM_WEIGHT_STD = 0.1
RUNNING_MEAN_STD = 0.1
LEARNED_TOKEN_STD = 1.0  # nn.Embedding-like tables (prompt tokens), N(0, 1) as at initialisation
POSITION_TABLE_STD = 0.5  # absolute position embedding of the ViT
POSITION_BIAS_STD = 0.2  # relative-position tables (ViT rel_pos_*, TinyViT attention_biases)
UPSCALING_TAP_NOISE = 0.3  # share of the mask decoder's transposed-conv taps that is independent per tap

# Keys that are not learnt and must keep the model's own values when given as tensors.
_CONSTANT_KEY_SUFFIXES = ("pixel_mean", "pixel_std")
# Learnt lookup tables whose scale does not follow fan-in.
_TOKEN_KEY_PARTS = ("point_embeddings", "not_a_point_embed", "no_mask_embed", "iou_token", "mask_tokens")


def _key_rng(key: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _fan_in(key: str, shape: tuple[int, ...]) -> int:
    """Inputs feeding one output unit of a Linear / Conv / ConvTranspose weight."""
    if "output_upscaling" in key and len(shape) == 4:
        # ConvTranspose2d weight is (in, out, k, k); with kernel == stride every output
        # pixel sees exactly one kernel tap per input channel.
        return int(shape[0])
    return int(np.prod(shape[1:]))


def _draw(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One float64 array for ``key`` following the scale rules in the module docstring."""
    rng = _key_rng(key, seed)
    name = key.rsplit(".", 1)[-1]
    if name == "positional_encoding_gaussian_matrix":
        return rng.standard_normal(shape)  # random Fourier features, N(0, 1) like the original
    if name == "running_var":
        return rng.uniform(0.5, 1.5, size=shape)
    if name == "running_mean":
        return RUNNING_MEAN_STD * rng.standard_normal(shape)
    if name == "pos_embed":
        return POSITION_TABLE_STD * rng.standard_normal(shape)
    if name.startswith("rel_pos") or name == "attention_biases":
        return POSITION_BIAS_STD * rng.standard_normal(shape)
    if any(part in key for part in _TOKEN_KEY_PARTS):
        return LEARNED_TOKEN_STD * rng.standard_normal(shape)
    if name == "bias" or len(shape) <= 1 and name != "weight":
        return BIAS_STD * rng.standard_normal(shape)
    if name == "weight" and len(shape) == 1:
        # Every 1-D weight is a norm's affine scale (LayerNorm, LayerNorm2d, BatchNorm).
        return 1.0 + NORM_WEIGHT_STD * rng.standard_normal(shape)
    if "output_upscaling" in key and len(shape) == 4:
        # Mostly shared across the kernel taps: random taps draw a checkerboard into every
        # upscaled embedding pixel and turn all masks into speckle; trained SAMs upscale smoothly.
        shared = rng.standard_normal((*shape[:2], 1, 1))
        per_tap = rng.standard_normal(shape)
        mixed = np.sqrt(1 - UPSCALING_TAP_NOISE**2) * shared + UPSCALING_TAP_NOISE * per_tap
        return mixed / np.sqrt(_fan_in(key, shape))
    if len(shape) >= 2:
        return rng.standard_normal(shape) / np.sqrt(_fan_in(key, shape))
    raise ValueError(f"no rule to fill {key!r} with shape {shape}")


def deterministic_state_dict(
    shapes: Mapping[str, tuple[int, ...] | torch.Size | torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Fill every key of a state dict with reproducible values.

    ``shapes`` maps state-dict keys to shapes, or to the model's own tensors (then their
    dtype is honoured: integer buffers are copied unchanged, except BatchNorm's
    ``num_batches_tracked`` which becomes int64 zeros, and ``pixel_mean``/``pixel_std`` are
    copied). Float tensors come back as float32. Same ``(key, shape, seed)`` -> same values
    on every machine, whatever the other keys.
    """
    state: dict[str, torch.Tensor] = {}
    for key, spec in shapes.items():
        given = spec if isinstance(spec, torch.Tensor) else None
        shape = tuple(int(s) for s in (given.shape if given is not None else spec))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if given is not None and (not given.is_floating_point() or key.endswith(_CONSTANT_KEY_SUFFIXES)):
            state[key] = given.detach().clone()
            continue
        if key.endswith(_CONSTANT_KEY_SUFFIXES):
            raise ValueError(f"{key!r} is a constant: pass the model's tensor, not only its shape")
        state[key] = torch.from_numpy(_draw(key, shape, seed).astype(np.float32))
    return state


def load_deterministic_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite all of ``model``'s state dict with ``deterministic_state_dict`` and set eval mode.

    ``eval()`` is called after loading on purpose: MobileSAM's reference TinyViT caches
    its attention biases when switched to eval mode.
    """
    model.load_state_dict(deterministic_state_dict(model.state_dict(), seed), strict=True)
    return model.eval()


def standard_normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A float32 N(0, 1) tensor reproducible across environments (normalised encoder inputs, embeddings)."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def synthetic_cells_image(height: int, width: int, seed: int, n_cells: int = 24) -> np.ndarray:
    """A microscopy-looking uint8 RGB image (height, width, 3): coloured elliptical cells on a shaded background.

    Pure numpy, so the reference and our environment regenerate the same pixels; check
    with ``array_digest``.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    background = 25.0 + 20.0 * (rows / height) + 15.0 * (cols / width)
    image = np.repeat(background[..., None], 3, axis=2)
    scale = min(height, width)
    for _ in range(n_cells):
        centre_r, centre_c = rng.uniform(0, height), rng.uniform(0, width)
        radius_r, radius_c = rng.uniform(0.04, 0.12, size=2) * scale
        angle = rng.uniform(0, np.pi)
        colour = rng.uniform(60, 200, size=3)
        dr, dc = rows - centre_r, cols - centre_c
        along = (dr * np.cos(angle) + dc * np.sin(angle)) / radius_r
        across = (-dr * np.sin(angle) + dc * np.cos(angle)) / radius_c
        body = 1.0 / (1.0 + np.exp(8.0 * (np.sqrt(along**2 + across**2) - 1.0)))  # soft-edged ellipse
        image = image * (1 - body[..., None]) + colour * body[..., None]
    image += rng.normal(0, 6.0, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def array_digest(array: np.ndarray) -> str:
    """Short sha256 of an array's dtype, shape and bytes (to check regenerated inputs match)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]
