"""One benchmark report: Meta's reference and ours, in one process, on the same random-weight models.

Stages (each a row of one markdown table, times and ratios measured in this run):

* ``set_image`` of a 1024 x 1024 image for each model (vit_t, vit_b, vit_h), batch 1, and
  the encoder over a batch of tiles (seconds per tile);
* one-point ``predict`` (three masks, SAM's default);
* automatic masks on one 1024 x 1024 image (ours: decoder batches in fp32 and in the lower
  precision, the measurement behind ``engine/predict/stage_precision.py``);
* tiled automatic throughput, megapixels per second (``segment_everything``);
* propagation through a small stack, seconds per plane (``propagate_object``).

Precisions: fp32, the lower precision ``auto`` picks (bf16 on CUDA and on CPUs with native
bf16), and on a CPU ``int8`` (dynamic quantisation of the linear layers). Quality: the IoU
of each precision's best mask against our fp32 mask (``predict``), and the instance F1 of
each automatic label image against our fp32 one. Both sides get identical deterministic
weights (``tests/_weights.py``, the golden files' seeds), so the networks compute the same
function; the reference is optional (``segment_anything``, and ``mobile_sam`` for vit_t):
without it ours is reported alone.

Meta's reference needs torchvision, which does not install beside the main environment's
torch: run it from a separate environment with our package on the path::

    python3 -m venv /tmp/w/venv-ref
    /tmp/w/venv-ref/bin/pip install torch torchvision segment-anything mobilesam-mirror timm \\
        numpy scipy scikit-image pillow pooch requests tifffile zarr
    PYTHONPATH=src /tmp/w/venv-ref/bin/python benchmarks/report.py --device cpu --models vit_b --quick

``--quick`` times each variant once after one warm-up and shrinks the automatic stages
(16 x 16 points, a 1536 x 1536 tiled image with 8 x 8 points per tile, 3 planes).

``--compile`` adds a ``set_image`` row for our encoder through ``torch.compile`` (Inductor, at the
precision ``auto`` picks; ``engine.predict.device.compile_encoder``); its compilation happens
before the timed runs and is printed (minutes on a small CPU the first time, then Inductor's
on-disk cache).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WEIGHT_SEEDS = {"vit_t": 9, "vit_b": 2, "vit_l": 2, "vit_h": 2}  # tools/make_golden.py's PLAN where it has one


def _load_by_path(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _weights():
    return _load_by_path("_report_weights", REPO / "tests" / "_weights.py")


def _golden_tools():
    return _load_by_path("_report_make_golden", REPO / "tools" / "make_golden.py")


@dataclass
class Row:
    stage: str
    model: str
    variant: str
    seconds: float
    unit: str = "s"
    quality: str = ""
    extra: dict = field(default_factory=dict)


class Timer:
    """Wall time of callables on one device, synchronising CUDA / MPS around each call."""

    def __init__(self, device):
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def once(self, fn):
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def interleaved(self, functions: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
        """Median time of each function, run in turns so that load from other processes hits all alike."""
        for _ in range(warmup):
            for fn in functions.values():
                self.once(fn)
        times: dict[str, list[float]] = {label: [] for label in functions}
        for _ in range(repeats):
            for label, fn in functions.items():
                times[label].append(self.once(fn)[0])
        return {label: statistics.median(values) for label, values in times.items()}


# ----------------------------------------------------------------------------- models


def reference_available(name: str) -> str | None:
    """None when the reference for ``name`` can be imported, else why not."""
    package = "mobile_sam" if name == "vit_t" else "segment_anything"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            __import__(package)
    except Exception as err:  # ImportError, or torchvision failing to load beside this torch
        return f"{package}: {type(err).__name__}: {err}".splitlines()[0][:120]
    return None


def build_pair(name: str, device, with_reference: bool):
    """(ours, reference or None) with the same deterministic weights, on ``device``, eval mode."""
    from napari_sam.model import CONFIGS, build_sam

    seed = WEIGHT_SEEDS.get(name, 2)
    ours = _weights().load_deterministic_weights(build_sam(name), seed).eval()
    reference = None
    if with_reference:
        reference = _weights().load_deterministic_weights(_golden_tools().build_reference_sam(CONFIGS[name]), seed)
        reference = reference.to(device).eval()
    return ours, reference


def precisions_for(device, args) -> list[str]:
    import torch

    from napari_sam.engine.predict.device import resolve_precision

    names = ["fp32"]
    low = resolve_precision("auto", device)
    if low is not None:
        names.append("bf16" if low == torch.bfloat16 else "fp16")
    if device.type == "cpu" and not args.no_int8:
        names.append("int8")
    return names


def our_predictor(model, device, precision: str):
    from napari_sam.engine import Predictor
    from napari_sam.engine.predict.device import quantize_int8

    if precision == "int8":
        return Predictor(quantize_int8(model.cpu()), device="cpu", precision="fp32")
    return Predictor(model, device=device, precision=precision)


# ----------------------------------------------------------------------------- stages


def bench_set_image_and_predict(name: str, image: np.ndarray, device, args, rows: list[Row]) -> None:
    import torch

    from napari_sam.engine.metrics import mask_iou

    why_not = None if args.no_reference else reference_available(name)
    with_reference = not args.no_reference and why_not is None
    ours_model, reference_model = build_pair(name, device, with_reference)
    precisions = precisions_for(device, args)
    low = next((p for p in precisions if p in ("bf16", "fp16")), None)
    height, width = image.shape[:2]
    row, col = 0.45 * (height - 1), 0.55 * (width - 1)

    variants: dict[str, tuple] = {}
    if with_reference:
        golden = _golden_tools()
        for precision in ["fp32"] + ([low] if low else []):
            predictor = golden.reference_predictor(reference_model)
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

            def context(dtype=dtype):
                return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

            def set_image(predictor=predictor, context=context):
                with context(), torch.inference_mode():
                    predictor.set_image(image)

            def predict(predictor=predictor, context=context):
                # SamPredictor.predict cannot hand bf16 to numpy: call its torch half as predict does
                coords = predictor.transform.apply_coords(np.array([[col, row]]), predictor.original_size)
                with context(), torch.inference_mode():
                    masks, scores, _ = predictor.predict_torch(
                        torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
                        torch.ones((1, 1), dtype=torch.int64, device=device),
                        multimask_output=True,
                    )
                return masks[0].cpu().numpy(), scores[0].float().cpu().numpy()

            variants[f"ref {precision}"] = (set_image, predict)
    for precision in precisions:
        predictor = our_predictor(ours_model, device, precision)

        def set_image(predictor=predictor):
            predictor.set_image(image)

        def predict(predictor=predictor):
            masks, scores, _ = predictor.predict(points=[[row, col]], labels=[1], multimask=True)
            return masks, scores

        variants[f"ours {precision}"] = (set_image, predict)
    if args.compile:
        variants[f"ours {low or 'fp32'} compiled"] = _compiled_variant(ours_model, device, low or "fp32", image, (row, col))

    timer = Timer(device)
    repeats = 1 if args.quick else args.repeats
    set_times = timer.interleaved({k: v[0] for k, v in variants.items()}, repeats)
    predict_times = timer.interleaved({k: v[1] for k, v in variants.items()}, 3 * repeats, warmup=2)
    best = {}
    for label, (set_image, predict) in variants.items():
        set_image()
        masks, scores = predict()
        best[label] = masks[int(np.argmax(scores))]
    for label in variants:
        quality = f"IoU {mask_iou(best[label], best['ours fp32']):.4f} vs ours fp32"
        if with_reference and label != "ref fp32":
            quality += f", {mask_iou(best[label], best['ref fp32']):.4f} vs ref fp32"
        rows.append(Row("set_image", name, label, set_times[label], quality=quality))
        rows.append(Row("predict (1 point)", name, label, predict_times[label]))
    if why_not and not args.no_reference:
        print(f"  {name}: reference not available ({why_not}); ours alone", flush=True)

    if args.tiles > 1:
        bench_tile_batch(name, ours_model, reference_model, image, device, precisions, args, rows)


def _compiled_variant(model, device, precision: str, image: np.ndarray, point) -> tuple:
    """(set_image, predict) of a copy of ``model`` whose encoder goes through ``torch.compile``, compiled here."""
    import copy

    from napari_sam.engine.predict.device import compile_encoder

    compiled = copy.deepcopy(model)
    compile_encoder(compiled)
    predictor = our_predictor(compiled, device, precision)
    started = time.perf_counter()
    predictor.set_image(image)  # compiles (or reads Inductor's cache)
    print(f"  torch.compile of the {precision} encoder: first call {time.perf_counter() - started:.1f} s", flush=True)

    def set_image():
        predictor.set_image(image)

    def predict():
        masks, scores, _ = predictor.predict(points=[list(point)], labels=[1], multimask=True)
        return masks, scores

    return set_image, predict


def bench_tile_batch(name, ours_model, reference_model, image, device, precisions, args, rows) -> None:
    """Encoder seconds per tile: ``args.tiles`` tiles in one call against one at a time."""
    import torch

    from napari_sam.engine.predict.preprocessing import image_to_model_input

    timer = Timer(device)
    config = ours_model.config
    single = image_to_model_input(image, config, device, getattr(ours_model, "preprocessing", "sam"))
    batch = single.expand(args.tiles, -1, -1, -1).contiguous()
    functions = {}
    for precision in precisions:
        if precision == "int8":
            continue
        predictor = our_predictor(ours_model, device, precision)
        encoder = predictor.model.image_encoder

        def batched(encoder=encoder, predictor=predictor):
            with torch.inference_mode(), predictor.autocast():
                encoder(batch)

        def one_by_one(encoder=encoder, predictor=predictor):
            with torch.inference_mode(), predictor.autocast():
                for i in range(args.tiles):
                    encoder(batch[i : i + 1])

        functions[f"ours {precision} batched"] = batched
        functions[f"ours {precision} one by one"] = one_by_one
    if reference_model is not None:
        reference_input = batch  # the same normalised, padded tiles

        def reference_batched():
            with torch.inference_mode():
                reference_model.image_encoder(reference_input)

        functions["ref fp32 batched"] = reference_batched
    times = timer.interleaved(functions, 1, warmup=0 if args.quick else 1)
    for label, seconds in times.items():
        rows.append(Row(f"encoder x{args.tiles} tiles", name, label, seconds / args.tiles, unit="s/tile"))


def bench_automatic(name: str, image: np.ndarray, device, args, rows: list[Row]) -> None:
    import torch

    from napari_sam.engine.automatic.generation import generate_labels
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.metrics import f1_score
    from napari_sam.engine.predict.stage_precision import forced_stage_dtype

    points = 16 if args.quick else args.points_per_side
    why_not = None if args.no_reference else reference_available(name)
    ours_model, reference_model = build_pair(name, device, not args.no_reference and why_not is None)
    timer = Timer(device)
    params = AutomaticParams(points_per_side=points, coarse_levels=0)
    labels = {}
    precisions = [p for p in precisions_for(device, args) if p != "int8"]
    for precision in precisions:
        predictor = our_predictor(ours_model, device, precision)
        embedding = predictor.compute_embedding(image)
        decoder_options = [None] if precision == "fp32" else [None, predictor.autocast_dtype]
        for dtype in decoder_options:
            label = f"ours {precision} encoder, decoder {'fp32' if dtype is None else precision}"
            with forced_stage_dtype("decoder_batch", dtype):
                generate_labels(predictor, embedding=embedding, params=params)  # warm-up
                seconds, labels[label] = timer.once(lambda: generate_labels(predictor, embedding=embedding, params=params))
            rows.append(Row(f"automatic {points}x{points} (decode)", name, label, seconds))
    if reference_model is not None:
        from segment_anything import SamAutomaticMaskGenerator

        from napari_sam.engine.automatic.generation import paint_labels

        generator = SamAutomaticMaskGenerator(
            reference_model, points_per_side=points, pred_iou_thresh=params.pred_iou_thresh,
            stability_score_thresh=params.stability_thresh, box_nms_thresh=params.nms_thresh,
        )
        # the reference embeds inside generate(): time its embedding apart and subtract it
        predictor = generator.predictor
        with torch.inference_mode():
            embed_seconds, _ = timer.once(lambda: predictor.set_image(image))

        def reference_run():
            with torch.inference_mode():
                records = generator.generate(image)
            return paint_labels([((0, 0), r["segmentation"]) for r in records], image.shape[:2])

        seconds, labels["ref fp32"] = timer.once(reference_run)
        rows.append(Row(f"automatic {points}x{points} (decode)", name, "ref fp32", max(seconds - embed_seconds, 1e-9)))
    base = labels["ours fp32 encoder, decoder fp32"]
    for row in rows:
        if row.stage.startswith("automatic") and row.model == name and row.variant in labels:
            found = labels[row.variant]
            row.quality = f"F1 {f1_score(base, found):.3f} vs ours fp32, {int(found.max())} objects"


def bench_tiled(name: str, device, args, rows: list[Row]) -> None:
    from napari_sam.engine.automatic.segment import segment_everything
    from napari_sam.engine.predict.device import resolve_precision

    side = 1536 if args.quick else args.tiled_size
    points = 8 if args.quick else args.points_per_side
    ours_model, _ = build_pair(name, device, False)
    image = _weights().synthetic_cells_image(side, side, seed=11, n_cells=24 * (side // 1024 + 1) ** 2)
    precision = "fp32" if resolve_precision("auto", device) is None else "auto"
    timer = Timer(device)
    seconds, labels = timer.once(
        lambda: segment_everything(image, ours_model, tile_shape=1024, halo=128, points_per_side=points,
                                   device=str(device), precision=precision)
    )
    megapixels = side * side / 1e6
    rows.append(Row(f"tiled automatic {side}^2, {points}^2 pts/tile", name, f"ours {precision}",
                    megapixels / seconds, unit="MP/s", quality=f"{int(labels.max())} objects, {seconds:.1f} s"))


def bench_propagation(name: str, device, args, rows: list[Row]) -> None:
    try:
        from napari_sam.engine import propagate_object
    except ImportError as err:
        print(f"  propagation skipped: {err}", flush=True)
        return
    from napari_sam.engine import Predictor

    planes = 3 if args.quick else args.planes
    ours_model, _ = build_pair(name, device, False)
    volume = np.stack([_weights().synthetic_cells_image(512, 512, seed=21) for _ in range(planes)])
    predictor = Predictor(ours_model, device=device, precision="auto")
    timer = Timer(device)
    seconds, result = timer.once(
        lambda: propagate_object(predictor, volume, planes // 2, points=[[256.0, 256.0]], labels=[1])
    )
    rows.append(Row(f"propagation, {planes} planes 512^2", name, "ours auto", seconds / planes, unit="s/plane",
                    quality=f"{int(np.count_nonzero(result.mask.reshape(planes, -1).any(1)))} planes with the object"))


# ----------------------------------------------------------------------------- table


def ratio_cell(row: Row, rows: list[Row], variant: str) -> str:
    base = next((r for r in rows if r.stage == row.stage and r.model == row.model and r.variant == variant), None)
    if base is None or base is row or row.seconds <= 0:
        return ""
    value = row.seconds / base.seconds if row.unit == "MP/s" else base.seconds / row.seconds
    return f"{value:.2f}x"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| stage | model | variant | time | x ref fp32 | x ours fp32 | quality |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        ours_base = next(
            (r.variant for r in rows if r.stage == row.stage and r.model == row.model and r.variant.startswith("ours fp32")),
            "",
        )
        value = f"{row.seconds * 1000:.0f} ms" if row.unit == "s" and row.seconds < 1 else f"{row.seconds:.2f} {row.unit}"
        lines.append(
            f"| {row.stage} | {row.model} | {row.variant} | {value} | {ratio_cell(row, rows, 'ref fp32')} | "
            f"{ratio_cell(row, rows, ours_base)} | {row.quality} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b", "vit_h"])
    parser.add_argument("--stages", nargs="+", default=["set_image", "automatic", "tiled", "propagation"],
                        choices=["set_image", "automatic", "tiled", "propagation"])
    parser.add_argument("--automatic-model", help="model of the automatic, tiled and propagation stages "
                        "(default: the first of --models)")
    parser.add_argument("--quick", action="store_true", help="one timed run per variant, small automatic stages")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=4, help="tiles per encoder batch (1: skip the batch rows)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--tiled-size", type=int, default=2048)
    parser.add_argument("--planes", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-reference", action="store_true", help="report ours alone")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="add set_image with the encoder through torch.compile (Inductor) at auto precision")
    args = parser.parse_args(argv)

    import torch

    warnings.simplefilter("ignore")  # reference and quantisation deprecation noise
    from napari_sam.engine.predict.device import resolve_precision, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.quick and args.tiles > 2:
        args.tiles = 2
    name = device.type
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    low = resolve_precision("auto", device)
    print(
        f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"auto precision {low or 'fp32'}, load average {os.getloadavg()[0]:.1f}, "
        f"reference {'off' if args.no_reference else reference_available('vit_b') or 'segment_anything present'}",
        flush=True,
    )
    image = _weights().synthetic_cells_image(1024, 1024, seed=7)
    rows: list[Row] = []
    shown = 0

    def show_new_rows() -> None:  # progress: a long run shows its figures as they come
        nonlocal shown
        for row in rows[shown:]:
            print(f"    {row.stage} | {row.model} | {row.variant} | {row.seconds:.3f} {row.unit} | {row.quality}", flush=True)
        shown = len(rows)

    auto_model = args.automatic_model or args.models[0]
    stages = [("set_image", model_name, bench_set_image_and_predict, (model_name, image, device, args, rows))
              for model_name in args.models]
    stages += [
        ("automatic", auto_model, bench_automatic, (auto_model, image, device, args, rows)),
        ("tiled", auto_model, bench_tiled, (auto_model, device, args, rows)),
        ("propagation", auto_model, bench_propagation, (auto_model, device, args, rows)),
    ]
    failed = []
    for stage, model_name, bench, bench_args in stages:
        if stage not in args.stages:
            continue
        try:
            bench(*bench_args)
        except Exception as err:  # one broken stage must not lose the others' figures
            failed.append(f"{stage} {model_name}: {type(err).__name__}: {err}")
            print(f"  {stage} {model_name} FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        print(f"  {stage} {model_name} done", flush=True)
        show_new_rows()
    print()
    print(markdown(rows))
    print()
    print("x columns: baseline time / this time (> 1: faster than the baseline); MP/s rows: this / baseline. "
          "Medians of interleaved runs; the machine may be shared (see the load average above).")
    for row in rows:
        auto = f"ours {'fp32' if low is None else 'bf16'}"
        if row.stage == "set_image" and row.model == "vit_b" and row.variant in (auto, f"{auto} compiled"):
            how = " with torch.compile" if row.variant.endswith("compiled") else ""
            print(f"ABSOLUTE: vit_b set_image at auto precision{how} on {device}: {row.seconds:.2f} s")
    for line in failed:
        print(f"FAILED stage {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
