"""``napari-sam annotate-dataset``: boxes -> SAM masks -> a training dataset (COCO, YOLO-seg, TIFF, OME-Zarr)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``annotate-dataset`` subcommand to the ``napari-sam`` parser's ``subparsers``.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers`` returned; the new parser's ``run`` default is :func:`run`.
    """
    from napari_sam.engine.export.folders import (
        FORMATS,  # no torch: --help stays instant
    )

    p = subparsers.add_parser(
        "annotate-dataset",
        help="turn boxes into SAM masks and write a training dataset (COCO, YOLO-seg, TIFF, OME-Zarr)",
        description=(
            "Segment every box of every image in IMAGES_DIR with SAM and write the masks, with a class per "
            "object, as a dataset in --out. Boxes: a folder of one file per image named after the image "
            "(<stem>.csv with the header x_min,y_min,x_max,y_max[,class][,score], or <stem>.json with a list of "
            "such objects); pixels, x = column, y = row. Boxes past the image are clipped; a box entirely "
            "outside is an error. Rerunning the same command skips images already done (resume). An --out "
            "made with other settings or holding other files is only replaced with --overwrite, once the new "
            "dataset is complete. See docs/datasets.md."
        ),
    )
    p.add_argument("images", type=Path, metavar="IMAGES_DIR", help="folder of 2D images (.tif, .png, .jpg)")
    p.add_argument("--boxes", type=Path, required=True, help="folder of box files, <image stem>.csv or .json")
    p.add_argument("--model", required=True, help="model-zoo name or checkpoint file")
    p.add_argument("--format", choices=FORMATS, default="coco", help="dataset format (default: coco)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (created; its parent must exist)")
    p.add_argument("--segmentation", choices=("rle", "polygon"), default="rle",
                   help="COCO masks: rle (exact, default) or polygon (outlines; holes are lost)")
    p.add_argument("--classes", help="class order, comma-separated (YOLO indices, COCO ids); default: sorted")
    p.add_argument("--min-score", type=float, help="skip boxes whose score column is below this")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that cannot be resumed")
    p.add_argument("--dask", nargs="?", const="processes", metavar="SCHEDULER",
                   help="annotate in Dask tasks: 'processes' (default), 'threads' or a dask.distributed "
                        "scheduler address (the workers must see the same files)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="model precision (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _progress(disabled: bool):
    """``(update(done, total), close())`` drawing an image count on stderr (tqdm when installed)."""
    if disabled:
        return (lambda done, total: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        def plain(done, total):
            print(f"\rimages {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

        return plain, (lambda: None)
    bars = []

    def update(done, total):
        if not bars:
            bars.append(tqdm(total=total, initial=done, unit="image", desc="annotate", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    return update, (lambda: bars and bars.pop().close())


def run(args: argparse.Namespace) -> int:
    """Annotate ``args.images`` from ``args.boxes`` into the dataset ``args.out``; print a summary.

    Parameters
    ----------
    args
        The parsed options of the ``annotate-dataset`` subcommand.

    Returns
    -------
    int
        0 when done; 130 after Ctrl-C (rerunning the command resumes).

    Raises
    ------
    InputError
        Bad images, boxes or output (from the engine).
    CheckpointError, DownloadError
        The model could not be loaded.
    """
    from napari_sam.engine.datasets.auto_annotate import annotate_dataset

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    update, close = _progress(args.no_progress)
    try:
        summary = annotate_dataset(
            args.images, args.boxes, args.out, args.model, args.format, class_names=classes,
            segmentation=args.segmentation, min_score=args.min_score, overwrite=args.overwrite,
            device=args.device, precision=args.precision, scheduler=args.dask, progress=update,
        )
    except KeyboardInterrupt:
        close()
        print(f"napari-sam annotate-dataset: interrupted; rerun the same command to continue into {args.out}.",
              file=sys.stderr)
        return 130
    finally:
        close()
    resumed = f", {summary.skipped} done before" if summary.skipped else ""
    print(f"{summary.annotated} image(s) annotated{resumed}, {summary.objects} object(s), classes "
          f"{', '.join(summary.classes) or '(none)'} -> {summary.out} ({summary.format})", flush=True)
    return 0
