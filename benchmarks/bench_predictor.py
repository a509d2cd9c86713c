"""Our ``Predictor`` against the reference ``SamPredictor`` (Meta's segment-anything / MobileSAM), same run.

Needs an environment with both packages (the reference ones need torchvision)::

    /work/refenv/bin/python benchmarks/bench_predictor.py [--models vit_b vit_t] [--repeats 3]

For each model it builds the reference network and ours with identical deterministic
weights (``tests/_weights.py``), sets the same uint8 RGB image and times ``set_image``
and a one-point ``predict`` (multimask, as SAM's default): reference fp32, ours fp32 and,
where the CPU has native bf16, ours bf16 (and the reference under CPU bf16 autocast, the
fair baseline for it). Variants run in turns (the machine is shared: load from other
processes then hits all of them alike); medians after a warm-up, ``predict`` with three
times the repeats. Ratios are reference time / our time
(> 1: ours is faster). It also reports the best-mask IoU of ours vs the reference (fp32)
and of our bf16 vs our fp32 masks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interleaved_median_seconds(functions: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function, run in turns so that load from other processes hits all alike."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times: dict[str, list[float]] = {label: [] for label in functions}
    for _ in range(repeats):
        for label, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def bench_model(name: str, image: np.ndarray, repeats: int, with_bf16: bool) -> dict:
    import torch

    from napari_sam.engine import Predictor
    from napari_sam.model import CONFIGS, build_sam

    weights = _load_by_path("_bench_weights", REPO / "tests" / "_weights.py")
    golden = _load_by_path("_bench_make_golden", REPO / "tools" / "make_golden.py")
    seed = golden.PLAN[name]["weight_seed"]  # the golden files' seed: masks neither empty nor full
    reference_model = weights.load_deterministic_weights(golden.build_reference_sam(CONFIGS[name]), seed)
    our_model = weights.load_deterministic_weights(build_sam(name), seed)

    height, width = image.shape[:2]
    row, col = 0.45 * (height - 1), 0.55 * (width - 1)
    ref_prompt = {"point_coords": np.array([[col, row]]), "point_labels": np.array([1]), "multimask_output": True}
    our_prompt = {"points": np.array([[row, col]]), "labels": np.array([1]), "multimask": True}

    def reference_variant(autocast: bool):
        predictor = golden.reference_predictor(reference_model)
        context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

        def set_image():
            with context(), torch.inference_mode():
                predictor.set_image(image)

        def predict():
            if not autocast:
                with torch.inference_mode():
                    return predictor.predict(**ref_prompt)
            # SamPredictor.predict cannot hand bf16 tensors to numpy: call its torch half, as predict does.
            coords = predictor.transform.apply_coords(ref_prompt["point_coords"], predictor.original_size)
            with context(), torch.inference_mode():
                masks, scores, logits = predictor.predict_torch(
                    torch.as_tensor(coords, dtype=torch.float32)[None],
                    torch.as_tensor(ref_prompt["point_labels"])[None],
                    multimask_output=ref_prompt["multimask_output"],
                )
            return masks[0].numpy(), scores[0].float().numpy(), logits[0].float().numpy()

        return set_image, predict

    def our_variant(precision: str):
        predictor = Predictor(our_model, device="cpu", precision=precision)
        return (lambda: predictor.set_image(image)), (lambda: predictor.predict(**our_prompt))

    variants = {"ref fp32": reference_variant(False), "ours fp32": our_variant("fp32")}
    if with_bf16:
        variants["ref bf16"] = reference_variant(True)
        variants["ours bf16"] = our_variant("bf16")

    results: dict = {"model": name}
    set_times = interleaved_median_seconds({label: v[0] for label, v in variants.items()}, repeats)
    predict_times = interleaved_median_seconds({label: v[1] for label, v in variants.items()}, 3 * repeats, warmup=3)
    masks: dict = {}
    for label, (_, predict) in variants.items():
        results[f"{label}/set_image"] = set_times[label]
        results[f"{label}/predict"] = predict_times[label]
        out_masks, scores, _ = predict()
        masks[label] = out_masks[int(np.argmax(scores))]

    results["iou ours fp32 vs ref fp32"] = mask_iou(masks["ours fp32"], masks["ref fp32"])
    if with_bf16:
        results["iou ours bf16 vs ours fp32"] = mask_iou(masks["ours bf16"], masks["ours fp32"])
        results["iou ref bf16 vs ref fp32"] = mask_iou(masks["ref bf16"], masks["ref fp32"])
    results["foreground ref fp32"] = float(masks["ref fp32"].mean())
    return results


def print_table(all_results: list[dict], with_bf16: bool) -> None:
    columns = ["ref fp32", "ours fp32"] + (["ref bf16", "ours bf16"] if with_bf16 else [])
    header = f"{'model':<7} {'stage':<10}" + "".join(f"{c:>11}" for c in columns)
    header += f"{'fp32 x':>9}" + (f"{'bf16 x':>9}{'ours bf16/ref fp32 x':>22}" if with_bf16 else "")
    print(header)
    print("-" * len(header))
    for res in all_results:
        for stage in ("set_image", "predict"):
            times = [res[f"{c}/{stage}"] for c in columns]
            cells = "".join(f"{t * 1000:>9.0f}ms" if t < 10 else f"{t:>10.2f}s" for t in times)
            line = f"{res['model']:<7} {stage:<10}{cells}{times[0] / times[1]:>9.2f}"
            if with_bf16:
                line += f"{times[2] / times[3]:>9.2f}{times[0] / times[3]:>22.2f}"
            print(line)
    print()
    for res in all_results:
        ious = ", ".join(f"{k[4:]} = {v:.4f}" for k, v in res.items() if k.startswith("iou "))
        print(f"{res['model']}: best-mask IoU {ious}; reference foreground {res['foreground ref fp32']:.1%}")
    print("x columns: reference time / our time (> 1 means ours is faster); ms/s are medians.")


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_t"], choices=["vit_b", "vit_t"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-shape", nargs=2, type=int, default=[1024, 1024], metavar=("H", "W"))
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 even where the CPU supports it")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore")  # timm / mobile_sam deprecation noise
    from napari_sam.engine.predict.device import cpu_supports_bf16

    with_bf16 = cpu_supports_bf16() and not args.no_bf16
    weights = _load_by_path("_bench_weights", REPO / "tests" / "_weights.py")
    image = weights.synthetic_cells_image(*args.image_shape, seed=7)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {tuple(image.shape)}, "
        f"repeats {args.repeats}, bf16 {'on' if with_bf16 else 'off (CPU lacks native bf16)'}"
    )
    all_results = []
    for name in args.models:
        all_results.append(bench_model(name, image, args.repeats, with_bf16))
        print(f"  {name} done", flush=True)
    print()
    print_table(all_results, with_bf16)


if __name__ == "__main__":
    sys.exit(main())
