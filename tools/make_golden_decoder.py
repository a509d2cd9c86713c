"""Record micro-sam's instance decoder and its post-processing as small golden files.

Run in the separate oracle environment that has micro-sam and torch-em (never in the project's)::

    /tmp/w/venv-microsam/bin/python tools/make_golden_decoder.py

Writes to ``tests/data/golden/``:

* ``decoder_maps.npz`` / ``decoder_maps.json``: micro-sam's ``DecoderAdapter`` (torch-em's UNETR decoder, built as
  micro-sam's ``get_unetr`` builds it: no skip connections, final sigmoid, three outputs) at reduced sizes
  (embedding width 32, 8 initial features), filled with ``tests/_weights.py``'s deterministic weights, applied to a
  seeded embedding: its raw output and its post-processed maps for a non-square input, for both upsampling kinds.
* ``decoder_vit_b_keys.json``: every state-dict key and shape of the decoder micro-sam builds on a real SAM ViT-B
  image encoder with transposed convolutions (the layout of the published ``vit_b_decoder.pt``), built on the meta
  device (no weights stored).
* ``instance_postprocess.npz`` / ``.json``: decoder-like maps (torch-em's training targets for a synthetic label
  image, blurred and noised, quantised to uint16) and the instance labels micro-sam's
  ``InstanceSegmentationWithDecoder.generate`` makes of them for several settings.

``tests/model/test_decoder_reference.py`` and ``tests/engine/test_instance_postprocess.py`` replay them against our
code without importing micro-sam.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "data" / "golden"
FORMAT_VERSION = 1

WEIGHT_SEED = 31
EMBEDDING_SEED = 32
LABELS_SEED = 33
NOISE_SEED = 34
EMBED_DIM = 32
INITIAL_FEATURES = 8
# (upsampling kind, img_size, embedding side, input_size, original_size): the first as in SAM (16 x embedding ==
# img_size), the second as in our tiny models (16 x embedding != img_size, so the output is resized first)
DECODER_CASES = [
    {"use_conv_transpose": True, "img_size": 64, "side": 4, "input_size": [64, 43], "original_size": [90, 61]},
    {"use_conv_transpose": False, "img_size": 48, "side": 4, "input_size": [36, 48], "original_size": [50, 67]},
]
POSTPROCESS_SHAPE = (192, 224)
# micro-sam's defaults first, then settings that move every knob
POSTPROCESS_SETTINGS = [
    {},
    {"min_size": 40},
    {"foreground_threshold": 0.35, "center_distance_threshold": 0.4, "boundary_distance_threshold": 0.6},
    {"foreground_smoothing": 0.0, "distance_smoothing": 2.5, "min_size": 10},
    {"foreground_smoothing": 2.0, "distance_smoothing": 0.0, "center_distance_threshold": 0.3},
]
MICRO_SAM_DEFAULTS = {
    "foreground_threshold": 0.5,
    "center_distance_threshold": 0.5,
    "boundary_distance_threshold": 0.5,
    "foreground_smoothing": 1.0,
    "distance_smoothing": 1.6,
    "min_size": 0,
}


# tests/_weights.py, loaded the way tools/make_golden.py loads it (this script's folder is on sys.path)
W = importlib.import_module("make_golden").W


class _EncoderStub(torch.nn.Module):
    """What torch-em's UNETR reads from an encoder when the decoder runs on precomputed embeddings."""

    def __init__(self, img_size: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.in_chans = 3

    def forward(self, x):  # never called: the adapter decodes given embeddings
        raise RuntimeError("the decoder golden runs on embeddings only")


def reference_decoder(encoder: torch.nn.Module, use_conv_transpose: bool, **sizes):
    """micro-sam's DecoderAdapter around torch-em's UNETR, with the arguments micro-sam's get_unetr passes."""
    from micro_sam.instance_segmentation import DecoderAdapter
    from torch_em.model.unetr import UNETR

    unetr = UNETR(
        backbone="sam",
        encoder=encoder,
        out_channels=3,
        use_sam_stats=True,
        final_activation="Sigmoid",
        use_skip_connection=False,
        resize_input=True,
        use_conv_transpose=use_conv_transpose,
        **sizes,
    )
    return DecoderAdapter(unetr).eval()


def record_decoder_maps() -> None:
    arrays, cases = {}, []
    for index, case in enumerate(DECODER_CASES):
        encoder = _EncoderStub(case["img_size"], EMBED_DIM)
        adapter = reference_decoder(
            encoder, case["use_conv_transpose"], embed_dim=EMBED_DIM, initial_features=INITIAL_FEATURES
        )
        W.load_deterministic_weights(adapter, WEIGHT_SEED)
        embedding = W.standard_normal((1, EMBED_DIM, case["side"], case["side"]), EMBEDDING_SEED + index)
        with torch.no_grad():
            raw = adapter._forward_impl(embedding)
            maps = adapter(embedding, tuple(case["input_size"]), tuple(case["original_size"]))
        arrays[f"case{index}_forward"] = raw[0].numpy().astype(np.float32)
        arrays[f"case{index}_maps"] = maps[0].numpy().astype(np.float32)
        cases.append(
            {
                **case,
                "embedding_seed": EMBEDDING_SEED + index,
                "embedding_digest": W.array_digest(embedding.numpy()),
                "keys": len(adapter.state_dict()),
            }
        )
    np.savez_compressed(GOLDEN_DIR / "decoder_maps.npz", **arrays)
    meta = {
        "format_version": FORMAT_VERSION,
        "what": "micro-sam DecoderAdapter(torch_em UNETR, use_skip_connection=False, Sigmoid, 3 outputs)",
        "embed_dim": EMBED_DIM,
        "initial_features": INITIAL_FEATURES,
        "weight_seed": WEIGHT_SEED,
        "cases": cases,
        "versions": _versions(),
    }
    (GOLDEN_DIR / "decoder_maps.json").write_text(json.dumps(meta, indent=1) + "\n")


def record_vit_b_keys() -> None:
    """Keys and shapes of the decoder micro-sam builds on SAM's ViT-B (the published vit_b_decoder.pt layout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything import sam_model_registry
    with torch.device("meta"):
        sam = sam_model_registry["vit_b"]()
        adapter = reference_decoder(sam.image_encoder, True)
    keys = [[key, list(value.shape)] for key, value in adapter.state_dict().items()]
    meta = {
        "format_version": FORMAT_VERSION,
        "what": "micro-sam DecoderAdapter on segment_anything vit_b's image encoder, transposed convolutions",
        "img_size": int(sam.image_encoder.img_size),
        "keys": keys,
        "versions": _versions(),
    }
    (GOLDEN_DIR / "decoder_vit_b_keys.json").write_text(json.dumps(meta, indent=1) + "\n")


def _synthetic_labels(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Ellipses of varied sizes, many touching or overlapping (the later one wins), as uint32 labels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    labels = np.zeros(shape, dtype=np.uint32)
    for index in range(1, 31):
        centre = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10)
        radii = rng.uniform(5, 18, size=2)
        angle = rng.uniform(0, np.pi)
        dr, dc = rows - centre[0], cols - centre[1]
        along = (dr * np.cos(angle) + dc * np.sin(angle)) / radii[0]
        across = (-dr * np.sin(angle) + dc * np.cos(angle)) / radii[1]
        labels[along**2 + across**2 <= 1.0] = index
    return labels


def record_postprocess() -> None:
    from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder
    from scipy import ndimage
    from torch_em.transform.label import PerObjectDistanceTransform

    labels = _synthetic_labels(POSTPROCESS_SHAPE, LABELS_SEED)
    # the decoder's training targets: (instances, foreground, centre distance, boundary distance)
    target = PerObjectDistanceTransform(
        distances=True, boundary_distances=True, directed_distances=False, foreground=True, instances=True
    )(labels)[1:]
    # what a trained decoder predicts looks like its targets, blurred and noisy
    rng = np.random.default_rng(NOISE_SEED)
    maps = np.stack([ndimage.gaussian_filter(channel.astype(np.float64), 1.0) for channel in target])
    maps = np.clip(maps + rng.normal(0.0, 0.05, size=maps.shape), 0.0, 1.0)
    quantised = np.round(maps * 65535).astype(np.uint16)
    maps = (quantised.astype(np.float32) / np.float32(65535)).astype(np.float32)  # exactly what the test rebuilds

    segmenter = InstanceSegmentationWithDecoder(None, None)
    segmenter.set_state({"foreground": maps[0], "center_distances": maps[1], "boundary_distances": maps[2]})
    arrays = {"maps_uint16": quantised, "truth": labels.astype(np.uint16)}
    for index, settings in enumerate(POSTPROCESS_SETTINGS):
        params = {**MICRO_SAM_DEFAULTS, **settings}
        segmentation = segmenter.generate(**params, output_mode="instance_segmentation")
        arrays[f"labels{index}"] = np.asarray(segmentation).astype(np.uint16)
    np.savez_compressed(GOLDEN_DIR / "instance_postprocess.npz", **arrays)
    meta = {
        "format_version": FORMAT_VERSION,
        "what": "micro-sam InstanceSegmentationWithDecoder.set_state(maps).generate(**settings)",
        "maps": "maps_uint16 / 65535 as float32: (foreground, centre distance, boundary distance)",
        "settings": [{**MICRO_SAM_DEFAULTS, **settings} for settings in POSTPROCESS_SETTINGS],
        "versions": _versions(),
    }
    (GOLDEN_DIR / "instance_postprocess.json").write_text(json.dumps(meta, indent=1) + "\n")


def _versions() -> dict[str, str]:
    names = ("micro_sam", "torch_em", "torch", "numpy", "scipy", "scikit-image", "bioimage-cpp")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def main() -> None:
    torch.set_num_threads(1)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    record_decoder_maps()
    record_vit_b_keys()
    record_postprocess()


if __name__ == "__main__":
    main()
