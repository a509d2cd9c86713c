"""SAM 2.1 checkpoints: official layout of every size, recognition from shapes, SAM vs SAM 2, bad files.

``tests/data/golden/sam2_official_keys.json`` holds the state-dict keys and shapes of Meta's
``sam2.1_hiera_{tiny,small,base_plus,large}`` models as built by the ``sam2`` package from its
released configs (recorded in the oracle environment, see ``tools/make_golden_sam2.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from napari_sam.model import build_sam, load_model
from napari_sam.model.checkpoint import build_from_state_dict, detect_config
from napari_sam.model.config import SAM2_CONFIGS, SAM2_HIERA_T, TINY_SAM2, TINY_VIT
from napari_sam.model.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    UnsafeCheckpointError,
)
from napari_sam.model.sam2 import Sam2, build_sam2

OFFICIAL = json.loads((Path(__file__).parents[1] / "data" / "golden" / "sam2_official_keys.json").read_text())
SIZES = ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]


def _official_layout(name: str, device: str = "meta") -> dict[str, torch.Tensor]:
    """A state dict with the official keys and shapes (meta tensors: shapes only, no memory)."""
    return {key: torch.empty(shape, device=device) for key, shape in OFFICIAL[name].items()}


def _seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_sam2_file(tmp_path_factory) -> Path:
    """A tiny SAM 2 saved as Meta's training code saves it: ``{"model": state_dict}``."""
    path = tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt"
    torch.save({"model": _seeded(build_sam2(TINY_SAM2), 0).state_dict()}, path)
    return path


@pytest.mark.parametrize("name", SIZES)
def test_every_size_has_the_official_keys_and_shapes(name):
    with torch.device("meta"):
        model = build_sam2(name)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == OFFICIAL[name]


@pytest.mark.parametrize("name", SIZES)
def test_an_official_layout_of_every_size_is_recognised(name):
    assert detect_config(_official_layout(name)) is SAM2_CONFIGS[name]


def test_full_size_official_layout_loads_unchanged():
    state = {key: torch.randn(shape) * 0.02 for key, shape in OFFICIAL["sam2.1_hiera_tiny"].items()}
    model = build_from_state_dict(state, detect_config(state))
    assert isinstance(model, Sam2) and model.config is SAM2_HIERA_T
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert model.pixel_mean.flatten().tolist() == pytest.approx(list(SAM2_HIERA_T.pixel_mean))


def test_meta_checkpoint_loads_with_the_same_outputs(tiny_sam2_file):
    model = load_model(tiny_sam2_file, device="cpu")
    assert isinstance(model, Sam2) and model.config is TINY_SAM2 and model.preprocessing == "sam2"
    original = _seeded(build_sam2(TINY_SAM2), 0)
    x = torch.randn(1, 3, TINY_SAM2.img_size, TINY_SAM2.img_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours, ours_high = model.encode_image(x)
        theirs, theirs_high = original.encode_image(x)
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours_high, theirs_high))


def test_sam1_and_sam2_are_never_confused(tmp_path, tiny_sam2_file):
    sam1 = tmp_path / "tiny_sam1.pth"
    torch.save(build_sam(TINY_VIT).state_dict(), sam1)
    assert not isinstance(load_model(sam1, device="cpu"), Sam2)
    assert load_model(sam1, device="cpu").config is TINY_VIT
    with pytest.raises(ArchitectureMismatchError, match="does not fit config 'tiny_sam2_test'.*matches 'tiny_vit_test'"):
        load_model(sam1, device="cpu", config="tiny_sam2_test")
    with pytest.raises(ArchitectureMismatchError, match="does not fit config 'vit_b'.*matches 'tiny_sam2_test'"):
        load_model(tiny_sam2_file, device="cpu", config="vit_b")
    # a full-size SAM 2 layout is recognised as that SAM 2, a SAM ViT-B layout as ViT-B
    assert detect_config(_official_layout("sam2.1_hiera_small")).name == "sam2.1_hiera_small"
    with torch.device("meta"):
        vit_b = build_sam("vit_b").state_dict()
    assert detect_config(vit_b).name == "vit_b"


def test_sam2_with_a_missing_tensor_names_the_closest_sam2_size():
    state = _official_layout("sam2.1_hiera_base_plus")
    del state["sam_mask_decoder.conv_s0.weight"]
    with pytest.raises(ArchitectureMismatchError, match="Closest is 'sam2.1_hiera_base_plus'.*conv_s0.weight"):
        detect_config(state, source="broken.pt")


def test_bad_sam2_files_get_the_same_clear_errors(tmp_path, tiny_sam2_file):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_sam2_file.read_bytes()[: os.path.getsize(tiny_sam2_file) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(truncated, device="cpu")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": build_sam2(TINY_SAM2).state_dict(), "hook": Payload()}, unsafe)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_model(unsafe, device="cpu")

    wrong_shape = tmp_path / "wrong_shape.pt"
    state = build_sam2(TINY_SAM2).state_dict()
    state["image_encoder.trunk.pos_embed"] = torch.zeros(1, 8, 5, 5)
    torch.save({"model": state}, wrong_shape)
    with pytest.raises(ArchitectureMismatchError, match=r"trunk.pos_embed \(1, 8, 5, 5\) vs expected \(1, 8, 4, 4\)"):
        load_model(wrong_shape, device="cpu")
