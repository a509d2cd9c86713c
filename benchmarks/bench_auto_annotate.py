"""Auto-annotation of one image from its boxes: batched decoding (``annotate_image``'s default,
32 boxes per decoder call) against one box per call, same run, same model, same boxes.

    python benchmarks/bench_auto_annotate.py [--config vit_b] [--size 1024] [--repeats 2] [--threads 2]

Default: the tiny model trained here (256 input) on a 512 x 512 synthetic image with its true
boxes. ``--config vit_b`` builds ViT-B with random weights (1024 input; timings only). The
encoder runs once per image either way; the comparison is the decoding and upsampling of
every box. Prints the time of each and the ratio (one-by-one / batched), and checks both
give the same labels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TRAINED = REPO / "tests" / "data" / "tiny_sam_synthetic_v2.pt"


def main() -> None:
    from napari_sam.engine.datasets.auto_annotate import annotate_image
    from napari_sam.engine.datasets.boxes import boxes_from_xyxy
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.engine.predict.predictor import Predictor
    from napari_sam.model import build_sam, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a model config with random weights (default: the trained tiny model)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam(args.config).eval() if args.config else load_model(TRAINED, device="cpu")
    sample = synthetic_image((args.size, args.size), seed=7)
    xyxy = []
    for label_id in range(1, sample.labels.max() + 1):
        rows, cols = np.nonzero(sample.labels == label_id)
        xyxy.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    boxes = boxes_from_xyxy(xyxy, ["object"] * len(xyxy))
    predictor = Predictor(model, device="cpu", precision="fp32")
    predictor.set_image(sample.image)  # warm-up (and the encoder cost, reported apart)
    start = time.perf_counter()
    predictor.set_image(sample.image)
    encode = time.perf_counter() - start
    times, results = {}, {}
    for name, batch in (("batched (32 per call)", 32), ("one box per call", 1)):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = annotate_image(predictor, sample.image, boxes, batch_size=batch).labels
            best = min(best, time.perf_counter() - start)
        times[name] = best
    same = np.array_equal(*results.values())
    print(f"{len(boxes)} boxes on a {args.size} x {args.size} image, model {args.config or 'tiny trained'}, "
          f"{args.threads} threads; one encoder pass {encode:.2f} s (inside each time below)")
    for name, seconds in times.items():
        print(f"  {name:<24} {seconds:7.2f} s")
    ratio = times["one box per call"] / times["batched (32 per call)"]
    print(f"  ratio one-by-one / batched: {ratio:.2f}x; identical labels: {same}")


if __name__ == "__main__":
    main()
