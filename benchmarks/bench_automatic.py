"""Automatic mask generation: ours vs the reference ``SamAutomaticMaskGenerator``, same run.

Both generators get the same network weights (our trained tiny test model, loaded
into Meta's ``Sam`` with the same state-dict keys), the same 8-bit images and the
same settings (32 x 32 points, predicted IoU 0.88, stability 0.95, box NMS 0.7, no
crops, no small-region removal). Both results become label images through the
same painting rule (``paint_labels``), and are scored against the synthetic
ground truth with instance F1 at IoU 0.5.

Run in the reference environment, which has both packages::

    /work/refenv/bin/python benchmarks/bench_automatic.py [--images 4] [--threads 2]
    /work/refenv/bin/python benchmarks/bench_automatic.py --random-config vit_b --images 1 --points-per-side 16

(the second: timings at ViT-B's real size, 1024 x 1024 input, where upsampling every
proposal to full resolution costs the reference most; random weights, so no F1).

Prints per-image times, the total-time ratio (reference / ours) and F1 for each.
The row "ours fp32 every point" decodes the whole grid as the reference does
(``coarse_levels=0``): the gap to it is what coarse-to-fine decoding saves.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TRAINED = REPO / "tests" / "data" / "tiny_sam_synthetic_v2.pt"


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_models(random_config: str | None, trained_path: Path = TRAINED):
    """(our model, reference model) with identical weights: the trained tiny model, or random
    deterministic weights of ``random_config`` (e.g. vit_b, for timings at the real size)."""
    from napari_sam.model import build_sam, load_model

    golden = _load_by_path("_make_golden", REPO / "tools" / "make_golden.py")
    if trained_path.exists() and random_config is None:
        ours = load_model(trained_path, device="cpu")
        source = f"trained tiny model {trained_path}"
    else:
        weights = _load_by_path("_weights", REPO / "tests" / "_weights.py")
        ours = build_sam(random_config or "tiny_vit_test").eval()
        ours.load_state_dict(weights.deterministic_state_dict(ours.state_dict(), seed=22))
        source = f"RANDOM deterministic {ours.config.name} weights (F1 is meaningless)"
    reference = golden.build_reference_sam(ours.config)
    reference.load_state_dict(ours.state_dict())
    return ours.eval(), reference.eval(), source


def reference_labels(generator, rgb: np.ndarray) -> np.ndarray:
    from napari_sam.engine.automatic.generation import paint_labels

    records = generator.generate(rgb)
    masks = [((0, 0), r["segmentation"]) for r in records]
    return paint_labels(masks, rgb.shape[:2])


def tiled_quality(model, size: int, args) -> None:
    """F1 of segment_everything on a (size, size) synthetic image, twice with seams half a core apart."""
    from napari_sam.engine.automatic.segment import segment_everything
    from napari_sam.engine.automatic.tiling import make_tile_grid
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.engine.metrics import f1_score, seam_statistics

    sample = synthetic_image((size, size), seed=900, style=args.style)
    tile, halo = model.config.img_size, args.halo
    shift = (tile - 2 * halo) // 2
    print(f"tiled: {size} x {size}, {int(sample.labels.max())} objects; tile {tile}, halo {halo}, "
          f"{args.points_per_side}^2 points per tile; second grid shifted by {shift} px")
    results = []
    for offset in (0, shift):
        start = time.perf_counter()
        labels = segment_everything(
            sample.image, model, tile_shape=tile, halo=halo, points_per_side=args.points_per_side, tile_offset=offset,
            pred_iou_thresh=args.pred_iou_thresh, stability_thresh=args.stability_thresh,
            nested_thresh=args.nested_thresh, method="amg",  # this benchmark is about automatic masks
        )
        seconds = time.perf_counter() - start
        grid = make_tile_grid(sample.image.shape, tile, halo, offset=offset)
        stats = seam_statistics(sample.labels, labels, grid)
        results.append(labels)
        print(f"  offset {offset:>3}: {len(grid)} tiles, {seconds:.1f} s, {int(labels.max())} objects, "
              f"F1 vs truth {f1_score(sample.labels, labels):.3f}; seam objects found "
              f"{stats['seam_found']}/{stats['seam']} ({stats['seam_found'] / max(1, stats['seam']):.3f}), "
              f"interior {stats['interior_found']}/{stats['interior']} "
              f"({stats['interior_found'] / max(1, stats['interior']):.3f}); split: seam {stats['seam_split']}, "
              f"interior {stats['interior_split']}")
    print(f"  F1 between the two grids: {f1_score(results[0], results[1]):.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="synthetic test images (one SAM input each)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--style", default="mixed")
    parser.add_argument(
        "--random-config", help="random deterministic weights of this config (e.g. vit_b) instead of the trained model"
    )
    parser.add_argument("--model", type=Path, default=TRAINED, help="the trained checkpoint")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88, help="for both generators")
    parser.add_argument("--stability-thresh", type=float, default=0.95, help="for both generators")
    parser.add_argument("--nested-thresh", type=float, help="adds a row: ours with nested-mask suppression")
    parser.add_argument("--tiled", type=int, help="also measure tiled quality on a synthetic image of this side")
    parser.add_argument("--tiled-only", action="store_true", help="skip the comparison with the reference")
    parser.add_argument("--halo", type=int, default=48, help="halo of the tiled measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiled_only:
        from napari_sam.model import load_model

        tiled_quality(load_model(args.model, device="cpu"), args.tiled, args)
        return 0

    from segment_anything import SamAutomaticMaskGenerator

    from napari_sam.engine import Predictor
    from napari_sam.engine.automatic.generation import AutomaticParams, generate_labels
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.engine.metrics import f1_score
    from napari_sam.engine.predict.preprocessing import to_uint8_rgb

    ours_model, ref_model, source = build_models(args.random_config, args.model)
    size = ours_model.config.img_size
    print(f"model: {source}; images: {args.images} x ({size}, {size}) style {args.style!r}; threads {args.threads}")
    settings = dict(pred_iou_thresh=args.pred_iou_thresh, stability_thresh=args.stability_thresh, nms_thresh=0.7)
    print(f"settings (both): {settings}, {args.points_per_side}^2 points, no crops, no small-region removal")
    generator = SamAutomaticMaskGenerator(
        ref_model,
        points_per_side=args.points_per_side,
        points_per_batch=64,
        pred_iou_thresh=settings["pred_iou_thresh"],
        stability_score_thresh=settings["stability_thresh"],
        box_nms_thresh=settings["nms_thresh"],
        crop_n_layers=0,
        min_mask_region_area=0,
    )
    params = AutomaticParams(points_per_side=args.points_per_side, **settings)
    fp32 = Predictor(ours_model, device="cpu", precision="fp32")
    variants = {
        # every grid point decoded, as the reference does: what batching and low-resolution filtering give
        "ours fp32 every point": (fp32, AutomaticParams(points_per_side=args.points_per_side, coarse_levels=0, **settings)),
        "ours fp32": (fp32, params),
        "ours auto": (Predictor(ours_model, device="cpu", precision="auto"), params),
    }
    if args.nested_thresh:
        nested = AutomaticParams(points_per_side=args.points_per_side, nested_thresh=args.nested_thresh, **settings)
        variants["ours +nested"] = (variants["ours auto"][0], nested)
    samples = [synthetic_image((size, size), seed=1000 + i, style=args.style) for i in range(args.images)]
    rgbs = [to_uint8_rgb(s.image) for s in samples]

    if size <= 512:  # warm-up (first calls initialise kernels), not timed; negligible at the real sizes
        reference_labels(generator, rgbs[0])
        for predictor, variant_params in variants.values():
            generate_labels(predictor, rgbs[0], variant_params)

    times = {"reference": [], **{name: [] for name in variants}}
    scores = {name: [] for name in times}
    objects = {name: [] for name in times}
    for sample, rgb in zip(samples, rgbs):
        start = time.perf_counter()
        labels = reference_labels(generator, rgb)
        times["reference"].append(time.perf_counter() - start)
        scores["reference"].append(f1_score(sample.labels, labels))
        objects["reference"].append(int(labels.max()))
        for name, (predictor, variant_params) in variants.items():
            start = time.perf_counter()
            labels = generate_labels(predictor, rgb, variant_params)
            times[name].append(time.perf_counter() - start)
            scores[name].append(f1_score(sample.labels, labels))
            objects[name].append(int(labels.max()))

    # the image encoder is the same network in both: time it alone once per generator, so the ratio of
    # what differs (prompt decoding, filtering, post-processing) can be shown too
    encoder = {}
    start = time.perf_counter()
    generator.predictor.set_image(rgbs[0])
    encoder["reference"] = time.perf_counter() - start
    for name, (predictor, _) in variants.items():
        start = time.perf_counter()
        predictor.compute_embedding(rgbs[0])
        encoder[name] = time.perf_counter() - start

    truth = [int(s.labels.max()) for s in samples]
    print(f"ground-truth objects per image: {truth}")
    print(f"{'generator':<22} {'total s':>8} {'per image s':>12} {'ratio ref/x':>12} {'encoder s':>10} "
          f"{'ratio w/o encoder':>18} {'mean F1':>8}  objects")
    ref_total = sum(times["reference"])
    ref_rest = ref_total - len(samples) * encoder["reference"]
    for name in times:
        total = sum(times[name])
        rest = total - len(samples) * encoder[name]
        print(
            f"{name:<22} {total:8.2f} {total / len(samples):12.3f} {ref_total / total:12.2f} {encoder[name]:10.2f} "
            f"{ref_rest / rest:18.2f} {np.mean(scores[name]):8.3f}  {objects[name]}"
        )
    if args.tiled:
        tiled_quality(ours_model, args.tiled, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
