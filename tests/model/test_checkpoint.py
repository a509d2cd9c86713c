"""Checkpoint loading: safe unpickling, unwrapping, architecture detection, errors. Tiny models only."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_sam.model import build_sam
from napari_sam.model.checkpoint import (
    detect_config,
    load_model,
    read_state_dict,
    resolve_device,
    save_checkpoint,
    sha256sum,
)
from napari_sam.model.config import CONFIGS, TINY_TINYVIT, TINY_VIT
from napari_sam.model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)

DATA_DIR = Path(__file__).parents[1] / "data"
TINY_CONFIGS = [TINY_VIT, TINY_TINYVIT]


def _seeded_model(config, seed: int = 0):
    torch.manual_seed(seed)
    model = build_sam(config).eval()
    # Random-init leaves some tensors at exact constants (norm weights = 1, biases = 0);
    # perturb everything so a tensor loaded into the wrong slot changes the outputs.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def _run(model, config) -> tuple[torch.Tensor, ...]:
    """Image embedding, sparse/dense prompt embeddings, masks and IoU scores for a fixed input."""
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, config.img_size, config.img_size, generator=generator)
    points = torch.rand(1, 3, 2, generator=generator) * config.img_size
    labels = torch.tensor([[1, 0, -1]])
    with torch.no_grad():
        embedding = model.image_encoder(image)
        sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        masks, scores = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
    return embedding, sparse, dense, masks, scores


def _assert_same_weights(model_a, model_b) -> None:
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


@pytest.fixture(scope="module")
def tiny_vit_model():
    return _seeded_model(TINY_VIT)


@pytest.fixture(scope="module")
def tiny_vit_state(tiny_vit_model):
    return {key: value.clone() for key, value in tiny_vit_model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# Round trip, detection, containers


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda c: c.name)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, config):
    model = _seeded_model(config, seed=3)
    path = save_checkpoint(model, tmp_path / "weights.pth")

    loaded = load_model(path, device="cpu")

    assert loaded.config == config
    assert not loaded.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.parameters())
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    torch.testing.assert_close(loaded.pixel_mean.flatten(), torch.tensor(config.pixel_mean))
    for expected, got in zip(_run(model, config), _run(loaded, config)):
        assert torch.equal(expected, got)


def test_save_checkpoint_writes_plain_official_state_dict(tmp_path, tiny_vit_model):
    path = save_checkpoint(tiny_vit_model, tmp_path / "sub" / "w.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert type(raw) is dict
    assert set(raw) == set(tiny_vit_model.state_dict())
    assert {key.split(".")[0] for key in raw} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert "pixel_mean" not in raw  # not persistent, exactly like the released files
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda c: c.name)
def test_detection_picks_the_matching_tiny_config(config):
    state = _seeded_model(config).state_dict()
    assert detect_config(state) == config


@pytest.mark.parametrize("name", ["vit_b", "vit_h"])
def test_detection_recognises_official_checkpoint_layouts(name):
    # Keys and shapes of Meta's released files, recorded from the official package.
    shapes = json.loads((DATA_DIR / f"official_keys_{name}.json").read_text())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert detect_config(state).name == name


WRAPPERS = {
    "model": lambda sd: {"model": sd},
    "model_state_with_sam_prefix_and_optimizer": lambda sd: {
        "model_state": {f"sam.{k}": v for k, v in sd.items()},
        "optimizer_state": {"lr": 1e-4},
        "epoch": 12,
    },
    "state_dict_with_module_prefix": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    "lightning_model_prefix": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},
    "nested_model_state_dict": lambda sd: {"checkpoint_version": 2, "model": {"model_state_dict": sd}},
}


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=list(WRAPPERS))
def test_wrapped_and_prefixed_checkpoints_load(tmp_path, tiny_vit_model, tiny_vit_state, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(tiny_vit_state), path)
    loaded = load_model(path, device="cpu")
    assert loaded.config == TINY_VIT
    _assert_same_weights(tiny_vit_model, loaded)


def test_half_precision_checkpoint_loads_as_float32(tmp_path, tiny_vit_state):
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tiny_vit_state.items()}, path)
    loaded = load_model(path, device=torch.device("cpu"))
    key = "image_encoder.patch_embed.proj.weight"
    assert loaded.state_dict()[key].dtype == torch.float32
    torch.testing.assert_close(loaded.state_dict()[key], tiny_vit_state[key].half().float())


def test_explicit_config_overrides_detection(tmp_path, tiny_vit_model):
    path = save_checkpoint(tiny_vit_model, tmp_path / "w.pth")
    assert load_model(path, device="cpu", config="tiny_vit_test").config == TINY_VIT
    assert load_model(path, device="cpu", config=TINY_VIT).config == TINY_VIT
    with pytest.raises(ArchitectureMismatchError) as info:
        load_model(path, device="cpu", config=TINY_TINYVIT)
    message = str(info.value)
    assert "'tiny_tinyvit_test'" in message and "matches 'tiny_vit_test' instead" in message
    with pytest.raises(CheckpointError, match="Unknown config 'vit_zz'"):
        load_model(path, device="cpu", config="vit_zz")


# ---------------------------------------------------------------------------------------------------------------
# Wrong architecture


def test_missing_key_is_named_with_the_closest_config(tmp_path, tiny_vit_state):
    state = dict(tiny_vit_state)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(ArchitectureMismatchError) as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert "Closest is 'tiny_vit_test'" in message
    assert "missing from the file (1): mask_decoder.iou_token.weight" in message
    assert "unexpected" not in message and "shape mismatches" not in message


def test_changed_shape_and_extra_key_are_reported(tmp_path, tiny_vit_state):
    state = dict(tiny_vit_state)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    original_shape = tuple(state[key].shape)
    state[key] = torch.zeros(original_shape[0] + 1, original_shape[1])
    state["decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "reshaped.pth"
    torch.save(state, path)
    with pytest.raises(ArchitectureMismatchError) as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert "Closest is 'tiny_vit_test'" in message
    assert f"{key} {(original_shape[0] + 1, original_shape[1])} vs expected {original_shape}" in message
    assert "unexpected in the file (1): decoder.extra_head.weight" in message


def test_long_key_lists_are_truncated(tiny_vit_state):
    state = {k: v for k, v in tiny_vit_state.items() if not k.startswith("mask_decoder.")}
    dropped = len(tiny_vit_state) - len(state)
    with pytest.raises(ArchitectureMismatchError) as info:
        detect_config(state)
    message = str(info.value)
    assert f"missing from the file ({dropped}):" in message
    assert f"(+{dropped - 8} more)" in message
    assert len(message) < 2000


# ---------------------------------------------------------------------------------------------------------------
# Files that are not (safe) checkpoints


def test_missing_file_gives_file_not_found(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointNotFoundError) as info:
        load_model(missing, device="cpu")
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="neither an existing checkpoint file nor a zoo model name"):
        load_model("not_a_model_name", device="cpu")


@pytest.mark.parametrize(
    "content, reason",
    [
        (bytes(range(256)) * 16, "not a PyTorch checkpoint"),
        (b"", "is empty"),
        (b"hello, I am a text file\n", "not a PyTorch checkpoint"),
    ],
    ids=["random_bytes", "empty", "text"],
)
def test_non_checkpoint_files_are_rejected_clearly(tmp_path, content, reason):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_model(path, device="cpu")
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_truncated_checkpoint_is_rejected_clearly(tmp_path, tiny_vit_model):
    good = save_checkpoint(tiny_vit_model, tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(truncated, device="cpu")


def test_not_a_state_dict_is_rejected(tmp_path):
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict of tensors"):
        read_state_dict(tensor_file)
    no_tensors = tmp_path / "settings.pth"
    torch.save({"epoch": 3, "lr": 0.1}, no_tensors)
    with pytest.raises(CheckpointError, match=r"holds no tensors \(top-level keys: epoch, lr\)"):
        read_state_dict(no_tensors)


class _CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, tiny_vit_state, writer):
    marker = tmp_path / "payload_ran"
    trap = _CreatesFileWhenUnpickled(marker)
    path = tmp_path / "evil.pth"
    if writer == "torch_save":
        torch.save({"weights": tiny_vit_state, "trap": trap}, path)
    else:  # a bare pickle, as an old-style .pth would be
        with open(path, "wb") as handle:
            pickle.dump({"trap": trap}, handle, protocol=2)

    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(path, device="cpu")

    assert not marker.exists()
    message = str(info.value)
    assert "not a plain weights file" in message
    assert "code or Python objects" in message
    assert "'io.open'" in message  # the refused global: what the payload would have called

    # The payload is real: an unsafe unpickler does run it.
    with open(path, "rb") as handle:
        if writer == "plain_pickle":
            pickle.load(handle)
        else:
            torch.load(handle, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def test_sha256sum_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    content = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path.write_bytes(content)
    assert sha256sum(path) == hashlib.sha256(content).hexdigest()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            resolve_device("cuda")


def test_every_zoo_entry_names_a_known_config():
    from napari_sam.model import zoo

    assert len(zoo.REGISTRY) >= 5
    micro_sam = [f"vit_{size}_{domain}" for size in "tbl" for domain in ("lm", "em_organelles")]
    assert all(zoo.REGISTRY[name].has_decoder for name in micro_sam)
    filenames = [entry.filename for entry in zoo.REGISTRY.values()]
    assert len(set(filenames)) == len(filenames)
    for name, entry in zoo.REGISTRY.items():
        assert entry.name == name
        assert entry.config_name in CONFIGS, name
        # the hash a download is checked against: sha256 (64 hex) or xxh128 (32 hex) where that is what is published
        algorithm, digest = entry.known_hash.split(":")
        assert (algorithm, len(digest)) in (("sha256", 64), ("xxh128", 32)), name
        assert int(digest, 16) >= 0 and digest == digest.lower(), name
        assert entry.sha256 == "" or len(entry.sha256) == 64, name
        assert entry.url.startswith("https://"), name
        if entry.has_decoder:  # micro-sam's instance decoder: its own URL, xxh128 and cache file name
            algorithm, digest = entry.decoder_known_hash.split(":")
            assert algorithm == "xxh128" and len(digest) == 32 and int(digest, 16) >= 0, name
            assert entry.decoder_url.startswith("https://") and entry.decoder_url.endswith("_decoder.pt"), name
            assert entry.decoder_filename and entry.decoder_filename not in filenames, name
        else:
            assert entry.decoder_known_hash == "" and not entry.decoder_filename, name
        assert entry.hash_source and entry.license and entry.citation, name
        assert entry.preprocessing in (zoo.PREPROCESS_SAM, zoo.PREPROCESS_MEDSAM), name


def test_importing_zoo_does_not_import_torch_or_pooch():
    code = (
        "import sys\n"
        "import napari_sam.model.zoo as zoo, napari_sam.model.errors\n"
        "assert zoo.list_models()\n"
        "heavy = [m for m in ('torch', 'pooch', 'requests') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_preprocessing_is_recorded_and_validated(tmp_path, tiny_vit_model):
    path = save_checkpoint(tiny_vit_model, tmp_path / "m.pth")
    assert load_model(path, device="cpu").preprocessing == "sam"
    assert load_model(path, device="cpu", preprocessing="medsam").preprocessing == "medsam"
    with pytest.raises(ValueError, match="Unknown preprocessing"):
        load_model(path, device="cpu", preprocessing="imagenet")


# ---------------------------------------------------------------------------------------------------------------
# Hostile-user findings (issue 9)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_checkpoints_honour_the_umask(tmp_path, tiny_vit_model, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tiny_vit_model, tmp_path / "w.pth")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_loading_non_finite_weights_warns_with_the_count(tmp_path, tiny_vit_state):
    state = dict(tiny_vit_state)
    keys = [key for key, value in state.items() if value.is_floating_point()][:2]
    state[keys[0]] = torch.full_like(state[keys[0]], float("nan"))
    state[keys[1]] = state[keys[1]].clone()
    state[keys[1]].view(-1)[0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.warns(RuntimeWarning, match=r"2 of \d+ tensors hold NaN or infinite values"):
        load_model(path, device="cpu")


def test_finite_weights_load_without_warnings(tmp_path, tiny_vit_model):
    import warnings

    path = save_checkpoint(tiny_vit_model, tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(path, device="cpu")


@pytest.mark.parametrize("start", [b"\x80", b"\x80\x02", b"\x80\x04\x95"])
def test_random_bytes_that_start_like_a_pickle_are_not_called_code(tmp_path, start):
    import numpy as np

    path = tmp_path / "noise.pth"
    path.write_bytes(start + np.random.default_rng(9).bytes(4000))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint|corrupt") as info:
        load_model(path, device="cpu")
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert "code" not in str(info.value)


def test_a_path_named_like_a_zoo_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as info:
        load_model(Path("vit_b"), device="cpu")
    message = str(info.value)
    assert "neither" not in message
    assert "No checkpoint file" in message and "load_model('vit_b')" in message
