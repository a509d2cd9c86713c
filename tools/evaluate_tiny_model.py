"""Measure a tiny test-fixture model on held-out synthetic images: prompted IoU, AMG F1 and instance F1.

Three held-out sets (seeds below 1000; training uses seeds from 1_000_000 up):

* ``own``: the fixture's own training generator (``--data mixed+varied`` of train_tiny_model.py):
  ``SyntheticDataset(style="mixed", vary_style=True)`` and ``varied_image``, half each;
* ``validation``: ``napari_sam.engine.datasets.synthetic_validation`` (a generator never trained on);
* ``v1``: ``synthetic_dataset(8, seed=0, style="mixed")``, the set fixture v1 is measured on.

Prompted IoU: every object's tight box, one click at its most interior pixel, both (through the
public Predictor). F1 at IoU 0.5 (``napari_sam.engine.metrics.f1_score``) of automatic mask
generation (``generate_labels``) and, for a model with an instance decoder, of instance mode
(``segment_instances``). ``MODEL`` may be a checkpoint or a train state (``*.train_state.pt``).

    python tools/evaluate_tiny_model.py tests/data/tiny_sam_synthetic_v2.pt --amg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# the test model's IoU head never reaches the 0.88 of SAM's defaults (see tests/engine/test_automatic.py)
AMG_SETTINGS = {"points_per_side": 32, "pred_iou_thresh": 0.5}


def held_out_sets(count: int) -> dict:
    """The held-out sets by name (see the module docstring); ``count`` images in ``own`` and ``validation``."""
    from napari_sam.engine.datasets.synthetic import SyntheticDataset, synthetic_dataset
    from napari_sam.engine.datasets.synthetic_validation import ValidationDataset

    half = count // 2
    own = list(SyntheticDataset(half, seed=0, style="mixed", vary_style=True)) + list(
        SyntheticDataset(count - half, seed=0, varied=True))
    return {"own": own, "validation": list(ValidationDataset(count, seed=0)),
            "v1": synthetic_dataset(8, shape=(256, 256), seed=0, style="mixed")}


def load_any(path: Path, config: str):
    """A model from a checkpoint, or from the weights in a train state."""
    import torch

    from napari_sam.model import build_sam, load_model

    if path.name.endswith(".train_state.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_sam(config)
        model.load_state_dict(state["model"])
        print(f"# {path}: train state at step {state['step']}")
        return model.eval()
    return load_model(path, device="cpu")


def f1_scores(model, data, amg: bool) -> dict[str, float]:
    """Mean F1 (IoU 0.5) of instance mode (with a decoder) and, with ``amg``, of automatic mask generation."""
    import numpy as np

    from napari_sam.engine.automatic.generation import generate_labels
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.metrics import f1_score
    from napari_sam.engine.predict.predictor import Predictor

    predictor = Predictor(model, device="cpu", precision="fp32")
    scores: dict[str, list] = {"instance_f1": [], "amg_f1": []}
    seconds = {"instance_f1": 0.0, "amg_f1": 0.0}
    for sample in data:
        if getattr(model, "instance_decoder", None) is not None:
            from napari_sam.engine.automatic.instance import segment_instances

            started = time.perf_counter()
            found = segment_instances(predictor, sample.image)
            seconds["instance_f1"] += time.perf_counter() - started
            scores["instance_f1"].append(f1_score(sample.labels, found))
        if amg:
            started = time.perf_counter()
            found = generate_labels(predictor, sample.image, AutomaticParams(**AMG_SETTINGS))
            seconds["amg_f1"] += time.perf_counter() - started
            scores["amg_f1"].append(f1_score(sample.labels, found))
    result = {name: float(np.mean(values)) for name, values in scores.items() if values}
    result.update({f"{name}_s_per_image": seconds[name] / len(data) for name in result})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--config", default="tiny_trained_v2", help="config of a train state's weights")
    parser.add_argument("--images", type=int, default=16, help="images in the own and validation sets")
    parser.add_argument("--amg", action="store_true", help="also automatic mask generation F1 (slow)")
    parser.add_argument("--no-f1", action="store_true", help="prompted IoU only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from napari_sam.engine.training.evaluation import evaluate_with_predictor

    torch.set_num_threads(args.threads)
    model = load_any(args.model, args.config)
    for name, data in held_out_sets(args.images).items():
        result = evaluate_with_predictor(model, data, device="cpu", precision="fp32")
        if not args.no_f1:
            result.update(f1_scores(model, data, args.amg))
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
