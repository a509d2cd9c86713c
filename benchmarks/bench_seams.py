"""Seams: are objects that cross a core border found as often as interior ones, border by border?

The run the issue describes: the trained tiny test model, tile 256, halo 64 (cores of
128 px, so a core border every 128 px), 32 points per tile side, predicted-IoU
threshold 0.5, stability 0.95, on synthetic nuclei images of 512 x 512 and 2048 x 2048.

Segmenting the windows is the expensive part and does not depend on the stitching
rule, so each image's per-tile label images are computed once and cached in
``--workdir`` (keyed by image, grid and settings); every stitching variant then reuses
them. For each image and variant it prints:

* for two stitching rules, the current one (whole-and-convex first, ``stitching.CONVEX_ENOUGH``)
  and the baseline it replaced (core first: ``convex_enough=None``), from the same tiles:
* per core border (``row 128``, ``col 256``, ...): seam objects crossing it, how many
  were found (IoU >= 0.5), their recall and its ratio to the interior recall;
* instance F1 at IoU 0.5 over the whole image (precision and recall over all images);
* the worst border's ratio, the one the issue's bar (>= 0.95) is about;
* for every ground-truth object that some window segmented well (IoU >= 0.5 in that
  window's own label image) but the stitched output missed: WHY it was lost -- every
  good version touched an inner window edge (rule 1), the good versions were outranked
  by a worse duplicate (rule 3), or the kept version lost pixels to objects painted
  before it (rule 4) -- separately for seam and interior objects.

* with ``--shift D``: the model's own translation agreement (each window against the same
  window moved by (D, D), no tiling; ``engine.automatic.agreement``) and the tiled
  shifted-grid agreement (the stitched run against the run with ``tile_offset`` D); issue 14
  asks the second to come within 0.03 of the first.

``--method instance`` runs the model's instance decoder and a seeded watershed per tile
instead of automatic mask generation (same grid, stitching and tables).

    python benchmarks/bench_seams.py --sizes 512 --images 2
    python benchmarks/bench_seams.py --sizes 512 2048 --images 1 --workdir /tmp/seams
    python benchmarks/bench_seams.py --method instance --sizes 512 2048 --shift 40

The machine's load does not matter: nothing here is timed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAINED_V2 = REPO / "tests" / "data" / "tiny_sam_synthetic_v2.pt"  # the trained fixture; has an instance decoder


def tile_label_images(image, model, grid, params, cache: Path | None) -> dict[int, np.ndarray]:
    """{tile index: (H_w, W_w) int32 labels} of every window of ``grid``, from ``cache`` when there."""
    from napari_sam.engine.automatic.local_runner import LocalTileRunner
    from napari_sam.engine.automatic.tiling import global_intensity_range
    from napari_sam.engine.predict.predictor import Predictor

    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return {int(k): stored[k] for k in stored.files}
    runner = LocalTileRunner(Predictor(model, device="cpu"))
    value_range = global_intensity_range(image, has_channels=False)
    labels = {}
    for index, tile_labels in runner.iter_tile_labels(image, grid, params, value_range):
        labels[index] = np.asarray(tile_labels, dtype=np.int32)
        print(f"  tile {index + 1}/{len(grid)}", end="\r", file=sys.stderr, flush=True)
    if cache is not None:
        np.savez_compressed(cache, **{str(k): v for k, v in labels.items()})
    return labels


def stitch(grid, tile_labels: dict[int, np.ndarray], **stitcher_options) -> np.ndarray:
    """The (H, W) int32 labels the stitcher makes from the tiles' label images."""
    from napari_sam.engine.automatic.stitching import Stitcher

    out = np.zeros(grid.image_shape, dtype=np.int32)
    stitcher = Stitcher(grid, out, **stitcher_options)
    for tile in grid:
        stitcher.add(tile.index, tile_labels[tile.index])
    return out


def core_borders(grid) -> tuple[list[int], list[int]]:
    """(row borders, column borders): the inner core borders (seams) of ``grid``, image frame."""
    rows = sorted({t.core[1] for t in grid})[:-1]
    cols = sorted({t.core[3] for t in grid})[:-1]
    return rows, cols


def best_iou(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(N + 1,) for each ground-truth label 1..N the best IoU of one found label with it (index 0 unused)."""
    t = truth.ravel().astype(np.int64)
    f = found.ravel().astype(np.int64)
    n = int(t.max(initial=0))
    best = np.zeros(n + 1)
    both = (t > 0) & (f > 0)
    if not both.any():
        return best
    area_t = np.bincount(t, minlength=n + 1)
    area_f = np.bincount(f)
    pairs, inter = np.unique(np.stack([t[both], f[both]]), axis=1, return_counts=True)
    iou = inter / (area_t[pairs[0]] + area_f[pairs[1]] - inter)
    np.maximum.at(best, pairs[0], iou)
    return best


def object_borders(truth: np.ndarray, grid) -> dict[int, list[str]]:
    """{ground-truth label: the core borders it crosses (``"row 128"``, ``"col 256"``)}; [] for interior objects."""
    from scipy import ndimage

    rows, cols = core_borders(grid)
    crossing = {}
    for label, slices in enumerate(ndimage.find_objects(truth), start=1):
        if slices is None:
            continue
        r0, r1 = slices[0].start, slices[0].stop
        c0, c1 = slices[1].start, slices[1].stop
        # a border at b separates pixel b - 1 from pixel b; the box tells for convex-ish objects,
        # the pixels for the rest
        mask = truth[slices] == label
        names = []
        for b in rows:
            if r0 < b < r1 and mask[: b - r0].any() and mask[b - r0 :].any():
                names.append(f"row {b}")
        for b in cols:
            if c0 < b < c1 and mask[:, : b - c0].any() and mask[:, b - c0 :].any():
                names.append(f"col {b}")
        crossing[label] = names
    return crossing


def border_table(truth: np.ndarray, found: np.ndarray, grid, iou_thresh: float = 0.5) -> dict[str, dict]:
    """Per border and for the interior: {"n", "found"} counts of ground-truth objects."""
    iou = best_iou(truth, found)
    crossing = object_borders(truth, grid)
    table: dict[str, dict] = {"interior": {"n": 0, "found": 0}}
    rows, cols = core_borders(grid)
    for name in [f"row {b}" for b in rows] + [f"col {b}" for b in cols]:
        table[name] = {"n": 0, "found": 0}
    for label, names in crossing.items():
        for name in names or ["interior"]:
            table[name]["n"] += 1
            table[name]["found"] += int(iou[label] >= iou_thresh)
    return table


def add_tables(total: dict[str, dict], table: dict[str, dict]) -> None:
    for name, counts in table.items():
        slot = total.setdefault(name, {"n": 0, "found": 0})
        slot["n"] += counts["n"]
        slot["found"] += counts["found"]


def print_table(table: dict[str, dict]) -> float:
    """Print the table; return the worst border's seam/interior recall ratio."""
    inner = table["interior"]
    interior_recall = inner["found"] / max(inner["n"], 1)
    print(f"    interior      {inner['found']:5d} / {inner['n']:5d}  recall {interior_recall:.3f}")
    seam_n = sum(c["n"] for k, c in table.items() if k != "interior")
    seam_found = sum(c["found"] for k, c in table.items() if k != "interior")
    print(f"    all seams     {seam_found:5d} / {seam_n:5d}  recall {seam_found / max(seam_n, 1):.3f}  "
          f"ratio {seam_found / max(seam_n, 1) / max(interior_recall, 1e-9):.3f}")
    worst = np.inf
    for name, counts in table.items():
        if name == "interior" or counts["n"] == 0:
            continue
        recall = counts["found"] / counts["n"]
        ratio = recall / max(interior_recall, 1e-9)
        worst = min(worst, ratio)
        print(f"    {name:12s}  {counts['found']:5d} / {counts['n']:5d}  recall {recall:.3f}  ratio {ratio:.3f}")
    print(f"    worst border ratio {worst:.3f}")
    return worst


def loss_reasons(truth: np.ndarray, found: np.ndarray, grid, tile_labels: dict[int, np.ndarray],
                 iou_thresh: float = 0.5, convex_enough: float | None = None) -> dict[str, dict[str, int]]:
    """Why missed ground-truth objects were lost, for seam and interior objects separately.

    ``never``: no window segmented it (IoU >= ``iou_thresh`` in the window's own labels);
    ``edge``: every good version touches an inner window edge (stitching rule 1);
    ``outranked``: a good version was a candidate, but all were outranked by duplicates (rule 3);
    ``painted_over``: a good version was kept but lost pixels to objects painted earlier (rule 4).
    """
    from napari_sam.engine.automatic.stitching import (
        surviving_candidates,
        tile_candidates,
    )

    crossing = object_borders(truth, grid)
    final = best_iou(truth, found)
    reasons = {kind: {"never": 0, "edge": 0, "outranked": 0, "painted_over": 0, "missed": 0}
               for kind in ("seam", "interior")}
    candidates = {t.index: tile_candidates(t, tile_labels[t.index], grid.image_shape, convex_enough) for t in grid}
    kept = {}
    for t in grid:
        others = [c for n in grid.neighbours(t) for c in candidates[n.index]]
        kept[t.index] = {c.label for c in surviving_candidates(candidates[t.index], others)}
    # per window: best IoU of each truth object with a window label, and which label
    good = {}  # truth label -> list of (tile index, window label)
    for t in grid:
        r0, r1, c0, c1 = t.window
        window_truth = truth[r0:r1, c0:c1]
        labels = tile_labels[t.index]
        tt = window_truth.ravel().astype(np.int64)
        ff = labels.ravel().astype(np.int64)
        both = (tt > 0) & (ff > 0)
        if not both.any():
            continue
        # IoU against the WHOLE truth object (its area in the full image), so cut-off versions do not count
        area_t = np.bincount(truth.ravel().astype(np.int64))
        area_f = np.bincount(ff)
        pairs, inter = np.unique(np.stack([tt[both], ff[both]]), axis=1, return_counts=True)
        iou = inter / (area_t[pairs[0]] + area_f[pairs[1]] - inter)
        for (tl, fl), value in zip(pairs.T, iou):
            if value >= iou_thresh:
                good.setdefault(int(tl), []).append((t.index, int(fl)))
    for label, names in crossing.items():
        if final[label] >= iou_thresh:
            continue
        kind = "seam" if names else "interior"
        reasons[kind]["missed"] += 1
        versions = good.get(label, [])
        if not versions:
            reasons[kind]["never"] += 1
            continue
        as_candidates = [(ti, fl) for ti, fl in versions if any(c.label == fl for c in candidates[ti])]
        if not as_candidates:
            reasons[kind]["edge"] += 1
        elif not any(fl in kept[ti] for ti, fl in as_candidates):
            reasons[kind]["outranked"] += 1
        else:
            reasons[kind]["painted_over"] += 1
    return reasons


def agreements(image, model, grid, tiles, params, args, key: str) -> tuple[float, float]:
    """Print and return (the model's own translation agreement, the tiled shifted-grid agreement)."""
    from napari_sam.engine.automatic.agreement import (
        label_agreement,
        translation_agreement,
    )
    from napari_sam.engine.automatic.tiling import (
        global_intensity_range,
        make_tile_grid,
        segment_tile,
    )
    from napari_sam.engine.predict.predictor import Predictor

    shift, tile = args.shift, args.tile
    predictor = Predictor(model, device="cpu")
    value_range = global_intensity_range(image, has_channels=False)

    def segment_window(pixels, window):
        return segment_tile(predictor, pixels, params, value_range, window, (tile, tile))

    # windows every half tile, each with its moved copy inside the image
    starts = range(0, image.shape[0] - tile - shift + 1, tile // 2)
    own = translation_agreement(image, segment_window, (tile, tile), shift, [(r, c) for r in starts for c in starts])
    shifted = make_tile_grid(image.shape, tile, args.halo, offset=args.offset + shift)
    cache = args.workdir / f"tiles_{hashlib.sha256((key + f'shift{shift}').encode()).hexdigest()[:16]}.npz"
    shifted_tiles = tile_label_images(image, model, shifted, params, cache)
    tiled = label_agreement(stitch(grid, tiles), stitch(shifted, shifted_tiles))
    own_value, tiled_value = own[0] / max(own[1], 1), tiled[0] / max(tiled[1], 1)
    print(f"  shift {shift}: model's own translation agreement {own_value:.3f} ({own[0]}/{own[1]} objects, "
          f"{len(starts) ** 2} window pairs); tiled shifted-grid agreement {tiled_value:.3f} ({tiled[0]}/{tiled[1]}); "
          f"difference {own_value - tiled_value:+.3f}")
    return own_value, tiled_value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--images", type=int, default=1, help="images per size (seeds 0, 1, ...)")
    parser.add_argument("--seed", type=int, default=500, help="first image seed (held out: below 1000)")
    parser.add_argument("--style", default="mixed")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--halo", type=int, default=64)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou", type=float, default=0.5)
    parser.add_argument("--stability", type=float, default=0.95)
    parser.add_argument("--offset", type=int, default=0, help="seam shift (tile_offset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", choices=("amg", "instance"), default="amg",
                        help="amg: SAM prompts per tile; instance: the model's instance decoder and a watershed")
    parser.add_argument("--shift", type=int, default=0,
                        help="also measure translation and shifted-grid agreement for this shift (0: no)")
    parser.add_argument("--model", type=Path, default=TRAINED_V2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/napari_sam_seams"))
    args = parser.parse_args(argv)

    import torch

    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.automatic.tiling import make_tile_grid
    from napari_sam.engine.datasets.synthetic import synthetic_image
    from napari_sam.engine.metrics import match_instances
    from napari_sam.model import load_model

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, device="cpu")
    params = AutomaticParams(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou,
                             stability_thresh=args.stability)
    if args.method == "instance":
        from napari_sam.engine.automatic.instance import InstanceParams

        params = InstanceParams()
        settings = f"instance mode, {params}"
    else:
        settings = f"{args.points_per_side} points per side, thresholds {args.pred_iou}/{args.stability}"
    model_id = hashlib.sha256(args.model.read_bytes()).hexdigest()[:12]
    print(f"model {args.model.name}, tile {args.tile}, halo {args.halo} (seams every {args.tile - 2 * args.halo} px), "
          f"{settings}, style {args.style}")
    from napari_sam.engine.automatic.stitching import CONVEX_ENOUGH

    rules = {"core first (baseline)": None, f"whole and convex first ({CONVEX_ENOUGH})": CONVEX_ENOUGH}
    for size in args.sizes:
        total: dict[str, dict[str, dict]] = {rule: {} for rule in rules}
        reasons_total = {rule: {k: {} for k in ("seam", "interior")} for rule in rules}
        matches = {rule: [0, 0, 0] for rule in rules}  # matched, truth objects, found objects
        for k in range(args.images):
            seed = args.seed + k
            sample = synthetic_image((size, size), seed=seed, style=args.style)
            grid = make_tile_grid(sample.image.shape, args.tile, args.halo, offset=args.offset)
            key = json.dumps([size, seed, args.style, args.tile, args.halo, args.offset, repr(params), model_id])
            cache = args.workdir / f"tiles_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
            tiles = tile_label_images(sample.image, model, grid, params, cache)
            print(f"\n{size} x {size}, seed {seed}: {len(grid)} tiles, {int(sample.labels.max())} objects")
            if args.shift:
                agreements(sample.image, model, grid, tiles, params, args, key)
            for rule, convex_enough in rules.items():
                found = stitch(grid, tiles, convex_enough=convex_enough)
                table = border_table(sample.labels, found, grid)
                tp, n_truth, n_found = match_instances(sample.labels, found)
                matches[rule] = [a + b for a, b in zip(matches[rule], (tp, n_truth, n_found))]
                print(f"  {rule}: F1 {2 * tp / max(n_truth + n_found, 1):.3f} ({tp} matched, {n_found} found)")
                print_table(table)
                add_tables(total[rule], table)
                reasons = loss_reasons(sample.labels, found, grid, tiles, convex_enough=convex_enough)
                for kind, counts in reasons.items():
                    for reason, n in counts.items():
                        reasons_total[rule][kind][reason] = reasons_total[rule][kind].get(reason, 0) + n
        for rule in rules:
            if args.images > 1:
                tp, n_truth, n_found = matches[rule]
                print(f"\n{size} x {size}, all {args.images} images, {rule}: F1 {2 * tp / max(n_truth + n_found, 1):.3f}, "
                      f"precision {tp / max(n_found, 1):.3f}, recall {tp / max(n_truth, 1):.3f}")
                print_table(total[rule])
            for kind, counts in reasons_total[rule].items():
                print(f"  {rule}: missed {kind} objects: " + ", ".join(f"{r} {n}" for r, n in counts.items()))


if __name__ == "__main__":
    main()
