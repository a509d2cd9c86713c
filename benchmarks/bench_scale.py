"""Scale: synthetic images up to >= 20000 x 20000 pixels, stored as zarr, through the CLI.

For each size a synthetic uint16 image is written to a zarr array band by band
(blocks of the synthetic nuclei generator, tiled and flipped, so memory stays
small), then ``napari-sam segment IMAGE.zarr --out LABELS.zarr`` runs in a child
process. The child's peak resident memory comes from ``os.wait4`` (that process
alone), its time from the wall clock. Printed per size: tiles, seconds, seconds per
megapixel (flat when time grows linearly with area), peak RSS, and what the labels
alone would take in RAM as int32.

    python benchmarks/bench_scale.py --sizes 5000 10000 20000 --workdir /tmp/napari_sam_scale

The defaults use the trained tiny test model with 1024-pixel tiles (downscaled
to its 256 input) and 16 x 16 points per tile so that 20000^2 pixels finish in
minutes on a CPU; quality is not the point here (see bench_automatic.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BLOCK = 2048


def write_synthetic_zarr(path: Path, size: int, seed: int = 0, chunk: int = 1024) -> None:
    """A (size, size) uint16 zarr of synthetic nuclei, written one band of rows at a time."""
    import zarr

    from napari_sam.engine.datasets.synthetic import synthetic_image

    blocks = [synthetic_image((BLOCK, BLOCK), seed=seed + k, style="mixed", dtype=np.uint16).image for k in range(4)]
    array = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype=np.uint16)
    for row0 in range(0, size, BLOCK):
        rows = min(BLOCK, size - row0)
        band = np.empty((rows, size), dtype=np.uint16)
        for col0 in range(0, size, BLOCK):
            i, j = row0 // BLOCK, col0 // BLOCK
            block = blocks[(i * 7 + j * 3) % len(blocks)]
            # flips make neighbouring blocks differ even when they come from the same image
            block = block[:: (-1) ** i, :: (-1) ** j]
            cols = min(BLOCK, size - col0)
            band[:, col0 : col0 + cols] = block[:rows, :cols]
        array[row0 : row0 + rows] = band


def run_cli(image: Path, out: Path, args) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, last stdout line) of one CLI run in a child process."""
    command = [
        sys.executable, "-m", "napari_sam.cli", "segment", str(image), "--model", str(args.model), "--out", str(out),
        "--tile-size", str(args.tile_size), "--halo", str(args.halo), "--points-per-side", str(args.points_per_side),
        "--pred-iou-thresh", str(args.pred_iou_thresh), "--no-progress", "--overwrite",
    ]
    if args.nested_thresh:
        command += ["--nested-thresh", str(args.nested_thresh)]
    start = time.perf_counter()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the child
    # files, not pipes: nobody reads a pipe while we wait, and a full pipe would block the child
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        child = subprocess.Popen(command, stdout=out_file, stderr=err_file, text=True, env=env)
        # wait4 reports this child's own peak memory (RUSAGE_CHILDREN would mix all children)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"CLI failed:\n{stderr}")
    peak_mib = usage.ru_maxrss / 1024  # Linux: kilobytes
    return seconds, peak_mib, stdout.strip().splitlines()[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--model", default=str(REPO / "tests" / "data" / "tiny_sam_synthetic_v2.pt"))
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=128)
    parser.add_argument("--points-per-side", type=int, default=16)
    # the test model's IoU head stays below SAM's default 0.88: thresholds suited to it, so objects are found
    parser.add_argument("--pred-iou-thresh", type=float, default=0.6)
    parser.add_argument("--nested-thresh", type=float, default=0.8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/napari_sam_scale"))
    parser.add_argument("--threads", type=int, help="CPU threads of the segmenting process (default: torch's)")
    parser.add_argument("--keep", action="store_true", help="keep the images and labels")
    args = parser.parse_args(argv)

    from napari_sam.engine.automatic.tiling import make_tile_grid

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"model {args.model}; tile {args.tile_size}, halo {args.halo}, {args.points_per_side}^2 points per tile; "
          f"threads {args.threads or 'default'}")
    # "process s": the whole child (interpreter start, imports, model load); "segment s": the CLI's own
    # figure for the segmentation itself, which is what should grow with the area
    print(f"{'size':>7} {'tiles':>6} {'write s':>8} {'process s':>10} {'segment s':>10} {'s / Mpx':>8} "
          f"{'peak RSS MiB':>13} {'int32 labels MiB':>17}  result")
    rows = []
    for size in args.sizes:
        image = args.workdir / f"image_{size}.zarr"
        out = args.workdir / f"labels_{size}.zarr"
        start = time.perf_counter()
        if not image.exists():
            write_synthetic_zarr(image, size)
        written = time.perf_counter() - start
        tiles = len(make_tile_grid((size, size), args.tile_size, args.halo))
        seconds, peak, line = run_cli(image, out, args)
        segment_seconds = float(line.split(" objects in ")[1].split(" s")[0])
        megapixels = size * size / 1e6
        labels_mib = size * size * 4 / 2**20
        rows.append((size, segment_seconds / megapixels, peak))
        print(f"{size:>7} {tiles:>6} {written:8.1f} {seconds:10.1f} {segment_seconds:10.1f} "
              f"{segment_seconds / megapixels:8.3f} {peak:13.0f} {labels_mib:17.0f}  {line}", flush=True)
        if not args.keep:
            shutil.rmtree(image, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    per_mpx = [r[1] for r in rows]
    print(f"time per megapixel, largest / smallest size: {per_mpx[-1] / per_mpx[0]:.2f} (1.00 = linear in area)")
    print(f"peak RSS, largest / smallest size: {rows[-1][2] / rows[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
