"""MPS safety: the main paths create no float64 tensor on the model's device.

Apple's MPS backend has no float64; a float64 tensor reaching it fails at run time on a
Mac while every CPU test passes. This test runs the main paths on the CPU under a
``TorchFunctionMode`` that records every float64 tensor a torch function returns on the
model's device (factories such as ``torch.as_tensor`` included), and fails on any.
"""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode


class Float64Guard(TorchFunctionMode):
    """Records each torch call that returns a float64 tensor on ``device``, with the caller's line."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = torch.device(device)
        self.violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64 and tensor.device == self.device:
                caller = next(
                    (f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-1]) if "napari_sam" in f.filename),
                    "outside napari_sam",
                )
                self.violations.append(f"{getattr(func, '__name__', func)} at {caller}")
        return out


def test_guard_catches_a_float64_factory_and_an_op():
    guard = Float64Guard("cpu")
    with guard:
        torch.as_tensor(np.zeros(3))  # numpy's default float64 carried over
        torch.zeros(2, dtype=torch.float32) * 1.0  # fine
        torch.ones(2).double()
    assert len(guard.violations) == 2, guard.violations


def _image(rng: np.random.Generator, shape=(96, 128)) -> np.ndarray:
    image = rng.normal(1000.0, 50.0, shape)
    image[20:50, 30:70] += 800.0  # one bright object
    return image.astype(np.uint16)


def test_main_paths_create_no_float64_on_the_model_device(tiny_model):
    from napari_sam.engine import Predictor
    from napari_sam.engine.automatic.generation import generate_labels
    from napari_sam.engine.automatic.params import AutomaticParams

    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_model, device="cpu", precision="fp32")
    guard = Float64Guard(predictor.device)
    with guard:
        predictor.set_image(_image(rng))  # uint16 gray: scaling, RGB, resize, normalise, encoder
        masks, scores, logits = predictor.predict(points=[[35.0, 50.0]], labels=[1])
        predictor.predict(box=[20.0, 30.0, 50.0, 70.0], mask_input=logits[:1], multimask=False)
        batch_masks, _, _ = predictor.predict_batch(
            points=np.array([[[35.0, 50.0]], [[80.0, 100.0]]]), labels=np.ones((2, 1)), multimask=False
        )
        labels = generate_labels(predictor, _image(rng, (80, 80)), AutomaticParams(points_per_side=6, min_area=4))
    assert masks.shape == (3, 96, 128) and batch_masks.shape == (2, 1, 96, 128)
    assert labels.shape == (80, 80)
    assert guard.violations == [], "float64 tensors on the model device:\n" + "\n".join(sorted(set(guard.violations)))


@pytest.mark.parametrize("precision", ["bf16"])
def test_lower_precision_paths_create_no_float64(tiny_model, precision):
    from napari_sam.engine import Predictor

    predictor = Predictor(tiny_model, device="cpu", precision=precision)
    guard = Float64Guard(predictor.device)
    with guard:
        predictor.set_image(_image(np.random.default_rng(1)))
        predictor.predict(points=[[35.0, 50.0]], labels=[1])
    assert guard.violations == [], "\n".join(sorted(set(guard.violations)))
