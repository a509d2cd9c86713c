"""Volumes on CPU: propagation with and without cached embeddings, background stack embedding,
and what a resume after an interruption recomputes.

On a synthetic z-stack (``synthetic_stack``) it measures, in one run:

1. seconds per plane of ``propagate_object`` when every plane's embedding must be computed
   (nothing cached) and when the stack's embeddings are cached (the second object, or a
   re-propagation after a correction): the ratio is what the cache saves;
2. background stack embedding (``StackEmbeddings.embed_steps`` to a zarr store): planes per
   second, against ``Predictor.compute_embedding`` alone in a loop (the store's overhead);
3. a resume: the embedding run is cancelled halfway, a new run on the same store encodes only
   the missing planes (count and time against the full run); likewise ``segment_volume`` to a
   zarr output interrupted halfway and resumed (planes segmented again).

The model is built from a config with random weights (speed does not depend on the weights),
or ``trained`` for the tiny test fixture; a prompt on the middle plane of the largest object.

    python benchmarks/bench_volume.py [--model vit_t] [--planes 16] [--size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

TRAINED = Path(__file__).parents[1] / "tests" / "data" / "tiny_sam_synthetic.pt"


def _model(name: str):
    import torch

    from napari_sam.model import build_sam, load_model

    if name == "trained":
        return load_model(TRAINED, device="cpu")
    torch.manual_seed(0)
    return build_sam(name).eval()


def _largest_object(labels: np.ndarray):
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    truth = labels == ids[counts.argmax()]
    planes = np.flatnonzero(truth.any(axis=(1, 2)))
    return truth, int((planes[0] + planes[-1]) // 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_t", help="a config name (random weights) or 'trained'")
    parser.add_argument("--planes", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="plane side in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--auto", action="store_true", help="also time segment_volume's resume (slow)")
    parser.add_argument("--f1", action="store_true",
                        help="only report segment_volume's 3D F1 at IoU 0.5 (trained model, stack seed 0, 24 planes)")
    args = parser.parse_args(argv)

    import torch

    from napari_sam.engine import (
        Predictor,
        StackEmbeddings,
        propagate_object,
        segment_volume_steps,
    )
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.datasets.synthetic_volume import synthetic_stack
    from napari_sam.engine.volume.recipe import bounding_box
    from napari_sam.engine.volume.volumes import volume_view

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.f1:
        return report_f1(args.size)
    predictor = Predictor(_model(args.model), device="cpu", precision="fp32")
    stack = synthetic_stack((args.planes, args.size, args.size), seed=0)
    truth, middle = _largest_object(stack.labels)
    box = bounding_box(truth[middle])
    # random weights find no object to follow: relaxed rules make propagation visit every plane
    rules = {} if args.model == "trained" else {"min_score": 0.0, "min_overlap": 0.0, "max_growth": 1e9,
                                                "min_area": 1, "max_gap": args.planes}
    prompt = {"box": box} if args.model == "trained" else {"seed_mask": truth[middle]}
    print(f"model {args.model}, stack {stack.image.shape} {stack.image.dtype}, torch threads {torch.get_num_threads()}")

    # 1. propagation: nothing cached, then everything cached
    embeddings = StackEmbeddings(predictor, volume_view(stack.image))
    start = time.perf_counter()
    result = propagate_object(predictor, stack.image, middle, **prompt, cache=embeddings, **rules)
    cold = time.perf_counter() - start
    planes_cold = embeddings.computed
    start = time.perf_counter()
    again = propagate_object(predictor, stack.image, middle, **prompt, cache=embeddings, **rules)
    warm = time.perf_counter() - start
    assert np.array_equal(again.mask, result.mask)
    tried = planes_cold  # planes propagation looked at (each encoded once in the cold run)
    print(f"propagation over {tried} planes ({len(result.planes)} with the object): "
          f"not cached {cold / tried:.3f} s/plane, cached {warm / tried:.3f} s/plane, "
          f"ratio {cold / warm:.1f}x faster cached")

    # 2. background embedding of the whole stack to disk vs the encoder alone
    view = volume_view(stack.image)
    start = time.perf_counter()
    for plane in range(args.planes):
        predictor.compute_embedding(view.read(plane), view.intensity_range)
    encoder_only = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "embeddings.zarr"
        start = time.perf_counter()
        full = StackEmbeddings(predictor, view, path=store)
        for _ in full.embed_steps():
            pass
        full_s = time.perf_counter() - start
        print(f"background stack embedding: {args.planes / full_s:.2f} planes/s to zarr, "
              f"{args.planes / encoder_only:.2f} planes/s encoder alone (store overhead {full_s / encoder_only:.2f}x)")

        # 3. resume after an interruption halfway
        store2 = Path(folder) / "interrupted.zarr"
        first = StackEmbeddings(predictor, view, path=store2)
        steps = first.embed_steps()
        for _ in range(args.planes // 2):
            next(steps)
        steps.close()
        start = time.perf_counter()
        resumed = StackEmbeddings(predictor, volume_view(stack.image), path=store2)
        for _ in resumed.embed_steps():
            pass
        resume_s = time.perf_counter() - start
        print(f"embedding resume after {args.planes // 2} of {args.planes} planes: recomputed {resumed.computed} planes "
              f"(the missing ones), {resume_s:.2f} s vs {full_s:.2f} s for all ({resume_s / full_s:.2f}x)")
        reread = StackEmbeddings(predictor, volume_view(stack.image), path=store2)
        start = time.perf_counter()
        propagate_object(predictor, stack.image, middle, **prompt, cache=reread, **rules)
        from_disk = time.perf_counter() - start
        print(f"propagation from the on-disk cache in a new session: {from_disk / tried:.3f} s/plane "
              f"({cold / from_disk:.1f}x faster than not cached), {reread.computed} planes encoded")

        if args.auto:
            params = AutomaticParams(points_per_side=16, pred_iou_thresh=0.5, nested_thresh=0.8)
            out = str(Path(folder) / "labels.zarr")
            start = time.perf_counter()
            steps = segment_volume_steps(predictor, stack.image, out=out, params=params, cache=reread)
            for _ in range(args.planes // 2):
                next(steps)
            steps.close()
            half = time.perf_counter() - start
            counted = []
            start = time.perf_counter()
            steps = segment_volume_steps(predictor, stack.image, out=out, params=params, cache=reread, resume=True)
            try:
                while True:
                    counted.append(next(steps))
            except StopIteration:
                pass
            rest = time.perf_counter() - start
            print(f"segment_volume resume: {args.planes // 2} planes before the interruption ({half:.1f} s), "
                  f"{len(counted)} segmented after it ({rest:.1f} s); none twice")


def report_f1(size: int) -> None:
    """segment_volume on a held-out synthetic stack and a movie with the trained model: 3D F1 at IoU 0.5."""
    from napari_sam.engine import Predictor, segment_volume
    from napari_sam.engine.datasets.synthetic_volume import (
        synthetic_movie,
        synthetic_stack,
    )
    from napari_sam.engine.metrics import f1_score, match_instances

    predictor = Predictor(_model("trained"), device="cpu", precision="fp32")
    for name, sample in (("z-stack", synthetic_stack((24, size, size), seed=0)),
                         ("movie", synthetic_movie((10, size, size), seed=0))):
        start = time.perf_counter()
        labels = segment_volume(predictor, sample.image)
        seconds = time.perf_counter() - start
        matched, n_truth, n_found = match_instances(sample.labels, labels)
        per_plane = np.mean([f1_score(t, f) for t, f in zip(sample.labels, labels)])
        print(f"{name} {sample.image.shape}: 3D F1@0.5 {f1_score(sample.labels, labels):.3f} ({matched} matched of "
              f"{n_truth} true, {n_found} found); per-plane F1 {per_plane:.3f}; {seconds / len(labels):.2f} s/plane")


if __name__ == "__main__":
    main()
