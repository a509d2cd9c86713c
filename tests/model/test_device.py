"""Choosing the device: a device that is not there is a ``DeviceError``, an ``InputError`` in the engine."""

from __future__ import annotations

import pytest
import torch

from napari_sam.engine.errors import InputError
from napari_sam.model.device import resolve_device
from napari_sam.model.errors import DeviceError


def test_a_missing_cuda_device_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no usable CUDA device; choose 'cpu'"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("gpu please")
    assert issubclass(DeviceError, RuntimeError)  # callers that caught RuntimeError keep working
    assert resolve_device("cpu") == torch.device("cpu")


def test_select_device_turns_it_into_an_input_error(monkeypatch):
    from napari_sam.engine.predict.device import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA"):
        select_device("cuda")


def test_load_model_raises_the_device_error(monkeypatch, tmp_path, tiny_model):
    from napari_sam.model import load_model
    from napari_sam.model.checkpoint import save_checkpoint

    path = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError):
        load_model(path, device="cuda")


def test_a_gpu_index_beyond_the_gpus_present_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="1 CUDA device"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
