"""Instance mode against automatic mask generation (AMG): wall time and F1, same image, model and run.

Issue 14's bar: instance mode (the model's instance decoder and a seeded watershed, one
decoder pass per tile) at least 5x faster than AMG (a grid of SAM point prompts per tile)
on the CPU, at equal or better instance F1 (IoU >= 0.5) against the synthetic generator's
ground truth, on a 1024 x 1024 image and on a tiled 4096 x 4096 one.

Both methods run through ``segment_everything`` with the same model, image, tiles (tile
256 = the tiny fixture's input, halo 32 by default) and stitching; only ``method`` differs.
Before timing, each method runs once on a small image (warm-up: first calls allocate).
Prints one markdown table: per image size and method the wall time, objects found, F1,
precision and recall, and the AMG / instance time ratio.

    python benchmarks/bench_instance.py                       # 1024 x 1024, the v2 fixture
    python benchmarks/bench_instance.py --sizes 1024 4096 --threads 2
    python benchmarks/bench_instance.py --model path/to/model.pt --sizes 512

AMG on 4096 x 4096 with the tiny model costs tens of minutes on two cores (about 480
tiles of 1024 prompts); instance mode a minute or two. Times are wall-clock on whatever
else the machine is doing: compare the ratio, measured in one run, not absolute seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE_V2 = REPO / "tests" / "data" / "tiny_sam_synthetic_v2.pt"


def score(truth: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """F1, precision and recall of ``found`` against ``truth`` (one-to-one matches at IoU >= 0.5)."""
    from napari_sam.engine.metrics import match_instances

    tp, n_truth, n_found = match_instances(truth, np.asarray(found))
    return {
        "f1": 2 * tp / max(n_truth + n_found, 1),
        "precision": tp / max(n_found, 1),
        "recall": tp / max(n_truth, 1),
        "found": n_found,
        "truth": n_truth,
    }


def run_method(image: np.ndarray, model, method: str, settings: dict) -> tuple[np.ndarray, float]:
    """(labels, seconds) of one ``segment_everything`` run with ``method``."""
    from napari_sam.engine.automatic.segment import segment_everything

    start = time.perf_counter()
    labels = segment_everything(image, model, method=method, device="cpu", **settings)
    return np.asarray(labels), time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024], help="image sides (square images)")
    parser.add_argument("--seed", type=int, default=500, help="image seed (the fixture trains on others)")
    parser.add_argument("--style", default="mixed", help="synthetic_image style")
    parser.add_argument("--model", type=Path, default=FIXTURE_V2, help="a checkpoint with an instance decoder")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--points-per-side", type=int, default=32, help="AMG: prompts per tile side")
    parser.add_argument("--pred-iou", type=float, default=0.5, help="AMG: predicted-IoU threshold")
    parser.add_argument("--stability", type=float, default=0.95, help="AMG: stability threshold")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch

    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.model import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    if getattr(model, "instance_decoder", None) is None:
        parser.error(f"{args.model} has no instance decoder: instance mode needs one")
    common = {"tile_shape": args.tile, "halo": args.halo}
    amg = {**common, "points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou,
           "stability_thresh": args.stability}
    settings = {"instance": common, "amg": amg}
    warm = synthetic_image((args.tile, args.tile), seed=args.seed + 1000, style=args.style).image
    for method in ("instance", "amg"):
        run_method(warm, model, method, settings[method])

    print(f"model {args.model.name}, tile {args.tile}, halo {args.halo}, {args.threads} threads; AMG: "
          f"{args.points_per_side} points per side, thresholds {args.pred_iou}/{args.stability}; instance: "
          "InstanceParams() defaults; synthetic style "
          f"{args.style}, seed {args.seed}\n")
    print("| image | method | time (s) | objects (truth) | F1 | precision | recall | AMG / instance time |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        sample = synthetic_image((size, size), seed=args.seed, style=args.style)
        result = {}
        for method in ("instance", "amg"):
            labels, seconds = run_method(sample.image, model, method, settings[method])
            result[method] = {"seconds": seconds, **score(sample.labels, labels)}
        ratio = result["amg"]["seconds"] / max(result["instance"]["seconds"], 1e-9)
        for method in ("instance", "amg"):
            r = result[method]
            shown = f"{ratio:.1f}x" if method == "instance" else ""
            print(f"| {size} x {size} | {method} | {r['seconds']:.1f} | {r['found']} ({r['truth']}) | "
                  f"{r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {shown} |", flush=True)
        rows.append({"size": size, "ratio": ratio, **{m: result[m] for m in result}})
    return rows


if __name__ == "__main__":
    main()
