"""SAM 2.1 Hiera-T against SAM's ViT-T (MobileSAM) and ViT-B: ``set_image`` and ``predict`` on this machine.

All three run through our ``Predictor`` at the same precision (``auto`` by default: bf16 on
CPUs with native bf16, else fp32), on the same 1024-input image, with random deterministic
weights (``tests/_weights.py``; speed does not depend on the values). Times are medians of
``--repeats`` runs after one warm-up; ratios are against ViT-B measured in the same run, so
they hold on a machine shared with other work even when absolute times do not.

Then propagation through a stack of ``--planes`` planes with Hiera-T, embeddings computed
beforehand (both runs use the same cache): seconds per plane with SAM 2's memory
(``propagate_object`` with a click) against slice-by-slice prompting from the previous plane's
mask (the same call given the seed plane's mask, which takes the recipe of
``engine/volume/recipe.py``)::

    python benchmarks/bench_sam2.py [--precision auto] [--repeats 3] [--threads 2] [--planes 6]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = ("vit_b", "vit_t", "sam2.1_hiera_tiny")  # the first is the baseline of the ratios


def _weights_module():
    spec = importlib.util.spec_from_file_location("_bench_weights", REPO / "tests" / "_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(name: str, weights) -> torch.nn.Module:
    """The named architecture (SAM or SAM 2) with deterministic random weights."""
    from napari_sam.model import build_sam, build_sam2
    from napari_sam.model.config import SAM2_CONFIGS

    model = build_sam2(name) if name in SAM2_CONFIGS else build_sam(name)
    return weights.load_deterministic_weights(model, seed=1)


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--size", type=int, default=1024, help="side of the square test image")
    parser.add_argument("--planes", type=int, default=6, help="planes of the propagation stack (0: skip)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_sam.engine import Predictor

    weights = _weights_module()
    image = weights.synthetic_cells_image(args.size, args.size, seed=7)
    point = np.array([[args.size * 0.45, args.size * 0.55]])
    results = {}
    for name in MODELS:
        predictor = Predictor(build(name, weights), device="cpu", precision=args.precision)
        set_image = timed(lambda: predictor.set_image(image), args.repeats)
        predict = timed(lambda: predictor.predict(points=point, labels=[1]), args.repeats)
        results[name] = (set_image, predict, predictor.autocast_dtype)
        print(f"{name:<20} set_image {set_image:7.2f} s   predict {1000 * predict:7.1f} ms", flush=True)

    base_set, base_predict, dtype = results[MODELS[0]]
    print(f"\nprecision {args.precision} -> {dtype or 'fp32'}; {torch.get_num_threads()} threads; "
          f"ratios: {MODELS[0]} time / model time (higher is faster)")
    for name, (set_image, predict, _) in results.items():
        print(f"{name:<20} set_image x{base_set / set_image:5.2f}   predict x{base_predict / predict:5.2f}")
    if args.planes:
        bench_propagation(build(MODELS[-1], weights), weights, args)


def bench_propagation(model: torch.nn.Module, weights, args) -> None:
    """Seconds per plane: SAM 2's memory vs slice-by-slice prompting, the same embeddings cached for both."""
    from napari_sam.engine import Predictor
    from napari_sam.engine.volume.propagate import iter_propagation

    predictor = Predictor(model, device="cpu", precision=args.precision)
    big = weights.synthetic_cells_image(256 + 4 * args.planes, 256 + 4 * args.planes, seed=11)
    stack = np.stack([big[4 * t : 4 * t + 256, 4 * t : 4 * t + 256] for t in range(args.planes)])
    seed, click = args.planes // 2, {"points": [[128.0, 128.0]], "labels": [1]}

    def run(**prompt) -> tuple[float, int, object]:
        start = time.perf_counter()
        steps = iter_propagation(predictor, stack, seed, cache=cache, **prompt)
        planes = 0
        while True:
            try:
                next(steps)
                planes += 1
            except StopIteration as stop:
                return time.perf_counter() - start, planes, stop.value

    cache = None
    encode, _, first = run(**click)  # encodes every plane once
    cache = first.extras["embeddings"]
    memory, memory_planes, result = run(**click)
    seed_mask = result.plane_mask(seed)
    if not seed_mask.any():  # a random network may find nothing: slice-by-slice then starts from a disk
        rows, cols = np.ogrid[:256, :256]
        seed_mask = (rows - 128) ** 2 + (cols - 128) ** 2 < 40**2
    recipe, recipe_planes, _ = run(seed_mask=seed_mask)
    print(f"\npropagation, {args.planes} planes of 256x256 (first run with encoding: {encode:.1f} s)")
    print(f"with memory      {memory / memory_planes:6.3f} s/plane ({memory_planes} planes)")
    print(f"slice-by-slice   {recipe / recipe_planes:6.3f} s/plane ({recipe_planes} planes)")
    print(f"ratio slice-by-slice / memory per plane: x{(recipe / recipe_planes) / (memory / memory_planes):.2f}")


if __name__ == "__main__":
    main()
