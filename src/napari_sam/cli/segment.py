"""``napari-sam segment``: tiled automatic segmentation of an image of any size."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from napari_sam.cli.errors import UsageError

if TYPE_CHECKING:
    from napari_sam.engine.automatic.diagnostics import FilterReport

# (option, AutomaticParams field, type, help, help when the default is None); defaults come from AutomaticParams
AUTOMATIC_OPTIONS = (
    ("--points-per-side", "points_per_side", int, "prompt grid of N x N points per tile", None),
    ("--pred-iou-thresh", "pred_iou_thresh", float, "drop masks whose predicted IoU is below this", None),
    ("--stability-thresh", "stability_thresh", float, "drop masks whose stability score is below this", None),
    ("--nms-thresh", "nms_thresh", float, "box IoU above which the lower-scoring of two masks is dropped", None),
    ("--nested-thresh", "nested_thresh", float, "also suppress masks nested in better ones (e.g. 0.8)", "off"),
    ("--min-area", "min_area", int, "remove objects, holes and specks below this many pixels", None),
    ("--points-per-batch", "points_per_batch", int, "prompts decoded at once", "chosen to fit memory"),
)
# (option, InstanceParams field, type, help); defaults come from InstanceParams
INSTANCE_OPTIONS = (
    ("--foreground-threshold", "foreground_threshold", float, "instance mode: foreground probability above which "
     "a pixel belongs to an object"),
    ("--center-distance-threshold", "center_distance_threshold", float, "instance mode: seeds are pixels whose "
     "centre-distance map (0 at an object's centre) is below this"),
    ("--boundary-distance-threshold", "boundary_distance_threshold", float, "instance mode: seeds are pixels "
     "whose boundary-distance map (0 deep inside an object, 1 at its edge) is below this"),
    ("--foreground-smoothing", "foreground_smoothing", float, "instance mode: Gaussian sigma on the foreground map"),
    ("--distance-smoothing", "distance_smoothing", float, "instance mode: Gaussian sigma on the distance maps"),
    ("--min-size", "min_size", int, "instance mode: objects below this many pixels are removed"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` subcommand to the ``napari-sam`` parser's ``subparsers``.

    The defaults of the automatic-segmentation options are read from ``AutomaticParams`` and,
    for instance mode, ``InstanceParams``.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers`` returned; the new parser's ``run`` default is :func:`run`.
    """
    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.automatic.params import METHODS, AutomaticParams

    p = subparsers.add_parser(
        "segment",
        help="segment everything in an image of any size (tiled automatic segmentation)",
        description=(
            "Automatic instance segmentation of a 2D image or a stack (slice by slice) of any size: "
            "the image is tiled with a halo, every tile is segmented (by the model's instance decoder and a "
            "seeded watershed when it has one, else from a grid of SAM point prompts: --method), and objects are "
            "stitched so that each appears exactly once. Input: TIFF (memory-mapped), zarr, .npy or any "
            "image file; output: labels as TIFF (memory-mapped) or zarr, written without holding the "
            "image in memory. An existing output is only replaced with --overwrite, once the new one is "
            "complete; the input is never written over. An interrupted zarr output is marked incomplete "
            "and continued with --resume. Medical volumes (NIfTI, a DICOM series) are read in the patient's "
            "frame; a .nii/.nii.gz output gets exactly the scan's geometry; --window chooses the intensities "
            "SAM sees (the same for every plane)."
        ),
    )
    p.add_argument("image", type=Path, help="input image: .tif/.tiff, .zarr, .npy, .png, ..., .nii/.nii.gz, "
                   "a DICOM file or a folder holding one DICOM series")
    p.add_argument("--model", required=True, help="model-zoo name or checkpoint file")
    p.add_argument("--decoder", type=Path, help="an instance segmentation decoder file to attach to --model (e.g. "
                   "micro-sam's vit_b_lm_decoder.pt beside a checkpoint without it); default: the model's own")
    p.add_argument("--out", type=Path, required=True, help="output labels: .tif/.tiff, .zarr or .nii/.nii.gz "
                   "(NIfTI: in the scan's geometry)")
    p.add_argument("--window", help="intensity window for every plane: a CT preset (abdomen, liver, lung, bone, "
                   "brain, mediastinum), WIDTH,LEVEL in HU (e.g. 400,40), pLOW-HIGH percentiles (e.g. p1-99) or mr "
                   "(percentiles 0.5-99.5); default: percentiles 0.5-99.5 of the image")
    p.add_argument("--tile-size", type=int, help="side of the windows the model sees, in pixels "
                   "(default and minimum: the model's input size)")
    p.add_argument("--halo", type=int, help="context inside each window: windows overlap by 2 x halo and own "
                   "cores of tile - 2 * halo pixels (default: tile size / 8); make it at least the diameter of "
                   "the largest objects")
    p.add_argument("--method", choices=METHODS, help="instance: the model's instance decoder and a seeded "
                   "watershed (one decoder pass per tile: fast; needs a model with a decoder, e.g. vit_b_lm); "
                   "amg: automatic masks from a grid of SAM point prompts (any model); default: instance when the "
                   "model has a decoder, else amg")
    defaults = AutomaticParams()
    for option, field, kind, text, none_text in AUTOMATIC_OPTIONS:
        default = getattr(defaults, field)
        shown = none_text if default is None else default
        p.add_argument(option, dest=field, type=kind, default=default, help=f"{text} (default: {shown})")
    instance_defaults = InstanceParams()
    for option, field, kind, text in INSTANCE_OPTIONS:
        # None when not given: an instance option with --method amg is a mistake worth saying
        p.add_argument(option, dest=field, type=kind, help=f"{text} (default: {getattr(instance_defaults, field)})")
    p.add_argument("--scheduler", help="dask.distributed scheduler address (tcp://host:8786); default: this process")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                   help="auto: bf16 where it is fast; int8: linear layers quantised, CPU only (default: auto)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (once the new one is complete; never the input)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted zarr output started with the same settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _progress_printer(disabled: bool):
    """``(update(done, total), close())`` drawing a progress bar on stderr (tqdm when installed).

    The bar appears at the first update, so a run that fails its checks prints only its error.
    """
    if disabled:
        return (lambda done, total: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:  # a plain one-line bar
        def update(done, total):
            width = 30
            filled = int(width * done / max(total, 1))
            end = "\n" if done >= total else ""
            bar = "#" * filled + "." * (width - filled)
            print(f"\rtiles [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)

        return update, (lambda: None)
    bars = []

    def update(done, total):
        if not bars:
            bars.append(tqdm(total=total, initial=done - 1, unit="tile", desc="segment", file=sys.stderr))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    def close():
        if bars:
            bars.pop().close()

    return update, close


def run(args: argparse.Namespace) -> int:
    """Segment ``args.image`` into ``args.out`` and print the number of objects.

    Every check (input, output, model, tiles) happens in the engine before anything is
    written; a progress bar goes to stderr unless ``--no-progress``.

    Parameters
    ----------
    args
        The parsed options of the ``segment`` subcommand.

    Returns
    -------
    int
        0 when done; 130 after Ctrl-C (the message says what was left at ``--out`` and
        whether ``--resume`` continues it).

    Raises
    ------
    UsageError
        ``--out`` does not end in ``.tif``, ``.tiff`` or ``.zarr``, or an instance-mode option
        comes with ``--method amg``.
    InputError
        Bad input, output, options or device (from the engine).
    CheckpointError, DownloadError
        The model could not be loaded.
    """
    import time

    from napari_sam.engine.automatic.diagnostics import FilterReport
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.automatic.segment import run_steps, segment_everything_steps
    from napari_sam.engine.io.nifti import is_nifti_path

    to_nifti = is_nifti_path(args.out)
    if not (to_nifti or args.out.name.lower().endswith((".tif", ".tiff", ".zarr"))):
        raise UsageError(f"--out must end in .tif, .tiff, .zarr, .nii or .nii.gz, got {args.out}.")
    if to_nifti and args.resume:
        raise UsageError("--resume continues a .zarr output; a NIfTI output is written whole at the end.")
    _quiet_abandoned_reads()
    params = AutomaticParams(**{field: getattr(args, field) for _, field, *_ in AUTOMATIC_OPTIONS})
    instance_params = _instance_params(args)
    image, geometry = _open_input(args.image, args.window, args.out if to_nifti else None, args.overwrite)
    # every check (input, output, model, tiles) happens in the engine before anything is written
    report = FilterReport()
    model = args.model
    if args.decoder is not None:  # loaded here: the engine takes a name or path of one file, or a module
        from napari_sam.model import load_model

        model = load_model(args.model, device=args.device, decoder=args.decoder)
    steps = segment_everything_steps(
        image, model, args.tile_size, args.halo, params, out=None if to_nifti else args.out,
        scheduler=args.scheduler,
        device=args.device, precision=args.precision, overwrite=args.overwrite, resume=args.resume, report=report,
        method=args.method, instance_params=instance_params,
    )
    update, close = _progress_printer(args.no_progress)
    start = time.perf_counter()
    try:
        labels = run_steps(steps, update)
    except KeyboardInterrupt:
        close()
        print(f"napari-sam segment: interrupted; {_left_behind(args.out)}", file=sys.stderr)
        return 130
    finally:
        close()
    if to_nifti:
        from napari_sam.engine.io.nifti import write_nifti

        write_nifti(args.out, labels.reshape(geometry.shape), geometry, overwrite=args.overwrite)
    count = _max_label(labels)
    del labels
    print(f"{count} objects in {time.perf_counter() - start:.1f} s -> {args.out}", flush=True)
    if report.decoded or args.method == "amg":  # instance mode decodes no prompts: nothing to report
        print(_report_lines(report), flush=True)
    return 0


def _instance_params(args: argparse.Namespace):
    """``InstanceParams`` from the instance-mode options given (the others at their defaults)."""
    from napari_sam.engine.automatic.instance import InstanceParams

    given = {field: getattr(args, field) for _, field, *_ in INSTANCE_OPTIONS if getattr(args, field) is not None}
    if given and args.method == "amg":
        options = ", ".join(option for option, field, *_ in INSTANCE_OPTIONS if field in given)
        raise UsageError(f"{options} set instance mode, not --method amg; drop them or use --method instance.")
    return InstanceParams(**given)


def _open_input(image: Path, window: str | None, nifti_out: Path | None, overwrite: bool):
    """(what to segment, the geometry of a NIfTI output or None), checked before any work.

    A medical volume is read in its (z, y, x) patient frame; ``window`` makes the image a lazily
    windowed uint8 volume (the automatic segmentation takes 8-bit images as they are); a NIfTI
    output's place is checked here, since it is written only at the end.
    """
    import numpy as np

    from napari_sam.engine.io.geometry import array_geometry
    from napari_sam.engine.io.medical import is_medical_path, read_medical_volume
    from napari_sam.engine.io.nifti import check_nifti_output

    geometry = None
    if is_medical_path(image):
        volume = read_medical_volume(image)
        image, geometry = volume.data, volume.geometry
    if window is not None:
        from napari_sam.engine.io.images import open_image
        from napari_sam.engine.predict.windows import (
            WindowedVolume,
            parse_window,
            window_range,
        )

        chosen = parse_window(window)
        image = open_image(image)
        if np.dtype(image.dtype).kind not in "biuf" or image.ndim not in (2, 3):
            raise UsageError(f"--window needs a single-channel 2D image or 3D volume, got shape {image.shape}.")
        image = WindowedVolume(image, window_range(chosen, image))
        print(f"window: {chosen.describe()}", file=sys.stderr, flush=True)
    if nifti_out is not None:
        if geometry is None:  # not a scan: 1 mm voxels at the origin
            from napari_sam.engine.io.images import open_image

            shape = tuple(open_image(image).shape) if not hasattr(image, "shape") else tuple(image.shape)
            if len(shape) not in (2, 3):
                raise UsageError(f"A NIfTI output needs a 2D or 3D single-channel image, got shape {shape}.")
            shape = (1, *shape) if len(shape) == 2 else shape
            geometry = array_geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), shape)
        check_nifti_output(nifti_out, geometry, overwrite)
    return image, geometry


def _report_lines(report: FilterReport) -> str:
    """What each filter rejected, and the options to try when the thresholds rejected most masks."""
    options = {"pred_iou_thresh": "--pred-iou-thresh", "stability_thresh": "--stability-thresh"}
    tries = " ".join(f"{options[key]} {value:.2f}" for key, value in report.suggest().items())
    text = report.describe(hint=False)
    return f"{text}\nTry {tries} (thresholds relative to this model's scores)." if tries else text


def _quiet_abandoned_reads() -> None:
    """Keep a damaged input's one-line error the only message.

    zarr 3 reads chunks in asyncio tasks; when one fails (a damaged TIFF tile), its siblings are
    abandoned and asyncio reports each at exit ("Task was destroyed but it is pending!", a
    traceback of the already reported error). This command runs no other asyncio code.
    """
    import logging
    import sys
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    # an abandoned read finalised at exit, after its loop closed, raises "Event loop is closed" from its
    # __aexit__; Python prints that as "Exception ignored in ..." (seen once in CI). Other errors still print.
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and "loop is closed" in str(unraisable.exc_value)):
            previous(unraisable)

    sys.unraisablehook = hook


def _left_behind(out: Path) -> str:
    """What an interrupted run left at ``out``, and how to continue."""
    from napari_sam.engine.io.outputs import read_output_info

    info = read_output_info(out) if out.suffix.lower() == ".zarr" and out.exists() else None
    if info and not info.get("complete"):
        return (f"{out} holds {info.get('tiles_done')} of {info.get('tiles_total')} tiles and is marked incomplete; "
                "rerun the same command with --resume to continue.")
    return f"nothing new was written to {out}."


def _max_label(labels) -> int:
    """The highest label, read in blocks of rows (the labels may be larger than memory)."""
    import numpy as np

    step = max(1, (1 << 24) // max(1, int(np.prod(labels.shape[1:]))))
    blocks = (np.asarray(labels[i : i + step]) for i in range(0, labels.shape[0], step))
    return max((int(block.max(initial=0)) for block in blocks), default=0)
