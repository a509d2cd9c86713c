"""Interactive latency of the annotator on CPU: prompt change -> updated preview, and embedding per slice.

For vit_b- and vit_t-shaped models (random weights, ``build_sam``) on a 1024 x 1024
image, with the embedding cached, it times what a click costs the user:
``AnnotatorController.add_point`` through napari's Points event, the decoder,
the upsampling to image size and the write into the preview Labels layer. The
engine's ``Predictor.predict`` alone is timed in the same run as the baseline,
so the napari overhead shows as a ratio.

    python benchmarks/bench_interactive.py [--models vit_t vit_b] [--size 1024] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_model(name: str, size: int, repeats: int, precision: str) -> dict:
    import torch
    from napari.components import ViewerModel

    from napari_sam._napari.controller import AnnotatorController
    from napari_sam.engine import Predictor
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.model import build_sam

    torch.manual_seed(0)
    predictor = Predictor(build_sam(name).eval(), device="cpu", precision=precision)
    image = synthetic_image((size, size), seed=0).image

    start = time.perf_counter()
    embedding = predictor.compute_embedding(image)
    embed_s = time.perf_counter() - start

    viewer = ViewerModel()
    layer = viewer.add_image(image)
    controller = AnnotatorController(viewer)
    controller.set_predictor(predictor, model_id=name)
    controller.set_image_layer(layer)
    controller.cache().put(controller.current_plane().key, embedding)

    rng = np.random.default_rng(0)
    clicks = iter(rng.uniform(0.1 * size, 0.9 * size, size=(10_000, 2)))

    def click_to_preview():  # a fresh single click each time: clear, add, decode, show
        controller.clear_prompts()
        controller.add_point(next(clicks))

    def second_click_to_preview():  # adding a point to an existing prompt set (single-mask decode)
        controller.add_point(next(clicks))
        if len(controller.points_layer.data) > 3:
            controller.clear_prompts()

    predictor.set_embedding(embedding)
    point = np.array([[size / 2, size / 2]])
    engine_ms = _median_ms(lambda: predictor.predict(point, np.array([1]), multimask=True), repeats)
    gui_ms = _median_ms(click_to_preview, repeats)
    more_ms = _median_ms(second_click_to_preview, repeats)
    assert controller.preview_info.n_objects >= 0  # the preview was produced through the real path
    return {
        "model": name,
        "precision": "fp32" if predictor.autocast_dtype is None else str(predictor.autocast_dtype).split(".")[-1],
        "embed_s": embed_s,
        "engine_predict_ms": engine_ms,
        "click_to_preview_ms": gui_ms,
        "extra_point_ms": more_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b"])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    import torch

    print(f"CPU threads: {torch.get_num_threads()}, image {args.size} x {args.size}, median of {args.repeats}")
    header = (
        f"{'model':<7}{'prec':<6}{'embed/slice s':>14}{'engine predict ms':>19}"
        f"{'click->preview ms':>19}{'ratio':>7}{'+point ms':>11}"
    )
    print(header)
    for name in args.models:
        r = bench_model(name, args.size, args.repeats, args.precision)
        print(
            f"{r['model']:<7}{r['precision']:<6}{r['embed_s']:>14.2f}{r['engine_predict_ms']:>19.1f}"
            f"{r['click_to_preview_ms']:>19.1f}{r['click_to_preview_ms'] / r['engine_predict_ms']:>7.2f}"
            f"{r['extra_point_ms']:>11.1f}"
        )


if __name__ == "__main__":
    main()
