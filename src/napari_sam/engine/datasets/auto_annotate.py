"""Auto-annotation: boxes (from files or a detector) -> SAM masks -> a training dataset.

:func:`annotate_image` turns one image's boxes into instance labels with a class per
object (object ``k`` is the ``k``-th box, so ids follow the box file's rows; a box whose
mask comes out empty leaves its id unused). Where masks overlap, the smaller object is drawn
on top, so an object inside a bigger one stays visible.

:func:`annotate_dataset` does it for every image of a folder and writes COCO, YOLO-seg,
label TIFFs or OME-Zarr (layouts in :mod:`napari_sam.engine.export.folders`). It checks
every input (images, box files and their pairing, the output) before anything is
created; it resumes: images whose output exists are skipped, so rerunning the same command
after an interruption finishes the job, and rerunning after adding images annotates only
those. An existing output folder made with other settings, or holding other files, is
refused unless ``overwrite``; then the new dataset is built beside it and swapped in once
complete. With ``scheduler`` the images are annotated by Dask tasks (a few images each,
one model per task), on local threads or processes or a ``dask.distributed`` cluster that
shares the file system.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.datasets.boxes import (
    Boxes,
    Detector,
    clip_boxes,
    detect,
    pair_box_files,
    read_box_file,
)
from napari_sam.engine.errors import InputError
from napari_sam.engine.export.folders import FORMATS, DatasetFolder, read_manifest
from napari_sam.engine.export.instances import InstanceAnnotation

DEFAULT_BATCH = 32
"""Boxes decoded per predictor call."""
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
"""Dask's local schedulers; any other ``scheduler`` is a ``dask.distributed`` address."""


def annotate_image(predictor: Any, image: Any, boxes: Boxes, batch_size: int = DEFAULT_BATCH) -> InstanceAnnotation:
    """Segment every box of one image with SAM: instance labels and a class per object.

    Parameters
    ----------
    predictor
        A :class:`~napari_sam.engine.Predictor` (or anything with ``set_image`` and
        ``predict_batch(boxes=...)``); its image is replaced.
    image
        (H, W) or (H, W, C), any dtype the predictor takes.
    boxes
        The image's boxes (engine frame); clipped to the image, refused when entirely outside.
    batch_size
        Boxes per decoder call.

    Returns
    -------
    InstanceAnnotation
        uint32 labels (object ``k`` from box ``k``, 1-based) and their classes.

    Raises
    ------
    InputError
        A box entirely outside the image, or an image the predictor refuses.
    """
    image = np.asarray(image)
    shape = image.shape[:2]
    labels = np.zeros(shape, dtype=np.uint32)
    if len(boxes) == 0:
        return InstanceAnnotation(labels, {})
    boxes = clip_boxes(boxes, shape)
    predictor.set_image(image)
    masks = []
    for start in range(0, len(boxes), max(1, batch_size)):
        batch, _, _ = predictor.predict_batch(boxes=boxes.boxes[start : start + batch_size], multimask=False)
        masks.extend(batch[:, 0])
    areas = [int(m.sum()) for m in masks]
    for index in sorted(range(len(masks)), key=lambda i: -areas[i]):  # small objects drawn last, on top
        labels[masks[index]] = index + 1
    present = set(np.unique(labels).tolist()) - {0}
    classes = {i + 1: boxes.classes[i] for i in range(len(masks)) if i + 1 in present}
    return InstanceAnnotation(labels, classes)


@dataclass
class DatasetSummary:
    """What :func:`annotate_dataset` did."""

    out: Path
    format: str
    images: int = 0
    """Images in the dataset."""
    annotated: int = 0
    """Images annotated by this run."""
    skipped: int = 0
    """Images done by an earlier run (resumed)."""
    objects: int = 0
    """Objects written by this run."""
    classes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    """Dataset-wide files written (COCO JSON, data.yaml)."""


def list_images(images_dir: str | os.PathLike) -> list[Path]:
    """The image files of a folder (not its subfolders), sorted by name.

    Parameters
    ----------
    images_dir
        The folder.

    Returns
    -------
    list of Path
        Files ending in an image suffix (``IMAGE_SUFFIXES``).

    Raises
    ------
    InputError
        No such folder, no images in it, or two images with one stem (their outputs would clash).
    """
    from napari_sam.engine.io.images import IMAGE_SUFFIXES

    folder = Path(images_dir)
    if not folder.is_dir():
        raise InputError(f"The images folder {folder} does not exist.")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith("."))
    if not images:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise InputError(f"Two images share the name {image.stem!r} ({stems[image.stem].name}, {image.name}): "
                             "their annotations would clash; rename one.")
        stems[image.stem] = image
    return images


def read_image(path: Path) -> np.ndarray:
    """One 2D image (gray or with channels last) read whole.

    Parameters
    ----------
    path
        An image file.

    Returns
    -------
    np.ndarray
        (H, W) or (H, W, C).

    Raises
    ------
    InputError
        Unreadable, or not a 2D image.
    """
    from napari_sam.engine.io.images import open_image

    image = np.asarray(open_image(path)[...])
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] > 4):
        raise InputError(f"{path.name} is not a 2D image (shape {image.shape}); auto-annotation takes 2D images.")
    return image


def annotate_dataset(
    images_dir: str | os.PathLike,
    boxes: str | os.PathLike | Detector,
    out: str | os.PathLike,
    model: Any,
    format: str = "coco",
    *,
    class_names: Sequence[str] | None = None,
    segmentation: str = "rle",
    min_score: float | None = None,
    overwrite: bool = False,
    device: str | None = None,
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetSummary:
    """Annotate every image of ``images_dir`` from its boxes and write a dataset to ``out``.

    Parameters
    ----------
    images_dir
        Folder of 2D images (``.tif``, ``.png``, ``.jpg``, ...).
    boxes
        A folder of box files, one per image (``<stem>.csv`` or ``.json``, see
        :mod:`napari_sam.engine.datasets.boxes`), or a :class:`Detector`.
    out
        The dataset folder (created; its parent must exist).
    model
        A zoo name, a checkpoint path or a loaded SAM model.
    format
        "coco", "yolo", "tiff" or "ome-zarr".
    class_names
        Class order (YOLO indices, COCO category ids); None: the detector's
        ``class_names``, else the classes met, sorted.
    segmentation
        COCO masks: "rle" (exact) or "polygon".
    min_score
        Drop boxes whose score is below this (files with a ``score`` column, detectors).
    overwrite
        Replace an existing ``out`` that this run cannot resume (other settings or files).
    device, precision
        For the :class:`~napari_sam.engine.Predictor`.
    batch_size
        Boxes per decoder call.
    scheduler
        None: annotate here, one image after another. "threads", "processes" or a
        ``dask.distributed`` scheduler address: Dask tasks (box files only).
    progress
        Called with ``(images done, images total)`` after each image (and once at the start).

    Returns
    -------
    DatasetSummary
        Counts, the class list and the dataset-wide files.

    Raises
    ------
    InputError
        Bad images, box files that do not pair up or are malformed, an unknown format, or an
        existing ``out`` that cannot be resumed (without ``overwrite``).
    """
    from napari_sam.engine.io.safe_write import (
        check_output_folder,
        paths_overlap,
        resolved,
    )

    if format not in FORMATS:
        raise InputError(f"Unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}.")
    images = list_images(images_dir)
    detector = boxes if callable(boxes) and not isinstance(boxes, (str, os.PathLike)) else None
    box_files = {} if detector is not None else pair_box_files(images, boxes)
    per_image = {image: read_box_file(path) for image, path in box_files.items()}  # every file checked up front
    if detector is not None and scheduler is not None:
        raise InputError("Dask runs take box files; run a detector without a scheduler (or save its boxes first).")
    known = list(class_names or getattr(detector, "class_names", None) or [])
    if isinstance(getattr(detector, "class_names", None), dict) and not class_names:
        names = detector.class_names
        known = [str(names[k]) for k in sorted(names)]
    known += sorted({c or "object" for b in per_image.values() for c in b.classes} - set(known))
    target = resolved(out)
    for source in (images_dir,) + (() if detector is not None else (boxes,)):
        if paths_overlap(target, source):
            raise InputError(f"The output {target} overlaps the input {resolved(source)}; write it elsewhere.")
    check_output_folder(target)
    settings = {"model": _describe_model(model), "boxes": "detector" if detector else str(resolved(boxes)),
                "images": str(resolved(images_dir)), "segmentation": segmentation if format == "coco" else None}
    work, swap = _prepare_out(target, format, settings, overwrite)
    try:
        folder = DatasetFolder(work, format, settings, (read_manifest(work) or {}).get("classes", []) + known,
                               segmentation)
        summary = DatasetSummary(target, format, images=len(images))
        objects = _fill(folder, images, per_image, detector, model, summary, progress or (lambda done, total: None),
                        device=device, precision=precision, batch_size=batch_size, min_score=min_score,
                        scheduler=scheduler)
        summary.objects = objects
        summary.files = folder.finish(images)
        summary.classes = list(folder.classes)
    except BaseException:
        if swap:  # the replacement was not finished: the old dataset stays as it was
            from napari_sam.engine.io.safe_write import remove_path

            remove_path(work)
        raise
    if swap:
        from napari_sam.engine.io.safe_write import move_into_place

        move_into_place(work, target)
        summary.files = [target / f.relative_to(work) for f in summary.files]
    return summary


def _fill(folder: DatasetFolder, images: list, per_image: dict, detector, model, summary: DatasetSummary,
          report: Callable[[int, int], None], *, device, precision, batch_size: int, min_score, scheduler) -> int:
    """Annotate the images not done yet into ``folder``; counts them in ``summary``; returns the objects written."""
    folder.save_manifest(complete=False)
    todo = [image for image in images if not folder.is_done(image)]
    summary.skipped = len(images) - len(todo)
    report(summary.skipped, len(images))
    objects = 0
    if scheduler is None:
        from napari_sam.engine.predict.predictor import Predictor

        predictor = Predictor(_load(model, device), device=device, precision=precision) if todo else None
        for image_path in todo:
            image = read_image(image_path)
            found = detect(detector, image, min_score) if detector else _filter(per_image[image_path], min_score)
            annotation = annotate_image(predictor, image, found, batch_size)
            folder.write(image_path, image, annotation)
            summary.annotated += 1
            objects += len(annotation.classes)
            report(summary.skipped + summary.annotated, len(images))
        return objects
    for count in _run_on_dask(todo, per_image, folder, model, scheduler, device, precision, batch_size, min_score):
        summary.annotated += 1
        objects += count
        report(summary.skipped + summary.annotated, len(images))
    return objects


def _filter(boxes: Boxes, min_score: float | None) -> Boxes:
    if min_score is None or boxes.scores is None:
        return boxes
    keep = boxes.scores >= min_score
    return Boxes(boxes.boxes[keep], [c for c, k in zip(boxes.classes, keep, strict=True) if k], boxes.scores[keep],
                 boxes.source)


def _describe_model(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    config = getattr(model, "config", None)
    return f"a loaded model ({getattr(config, 'name', type(model).__name__)})"


def _load(model: Any, device: str | None):
    if isinstance(model, (str, os.PathLike)):
        from napari_sam.model import load_model

        return load_model(model, device=device)
    return model


def _prepare_out(target: Path, fmt: str, settings: dict, overwrite: bool) -> tuple[Path, bool]:
    """The folder to write in and whether it must be swapped into ``target`` at the end."""
    from napari_sam.engine.io.safe_write import temporary_sibling

    if target.exists() and not target.is_dir():
        raise InputError(f"The output {target} is a file; give a folder for the dataset.")
    manifest = read_manifest(target) if target.exists() else None
    resumable = manifest is not None and manifest.get("format") == fmt and manifest.get("settings") == settings
    if target.exists() and any(target.iterdir()) and not resumable:
        if not overwrite:
            what = (f"a {manifest.get('format')} dataset made with other settings ({_differences(manifest, fmt, settings)})"
                    if manifest else "files not written by annotate-dataset")
            raise InputError(f"The output folder {target} holds {what}; choose another folder, or replace it "
                             "with --overwrite (overwrite=True).")
        return temporary_sibling(target, directory=True), True
    if overwrite and resumable:
        return temporary_sibling(target, directory=True), True
    target.mkdir(exist_ok=True)
    return target, False


def _differences(manifest: dict, fmt: str, settings: dict) -> str:
    old = dict(manifest.get("settings") or {}, format=manifest.get("format"))
    new = dict(settings, format=fmt)
    return "; ".join(f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in new if old.get(k) != new.get(k))


def _annotate_chunk(images: list, per_image: dict, folder: DatasetFolder, spec: Any, device, precision,
                    batch_size: int, min_score) -> list[int]:
    """One Dask task: build the model once, annotate and write a few images; their object counts."""
    from napari_sam.engine.predict.predictor import Predictor

    predictor = Predictor(spec.build(), device=device, precision=precision)
    counts = []
    for image_path in images:
        image = read_image(image_path)
        annotation = annotate_image(predictor, image, _filter(per_image[image_path], min_score), batch_size)
        folder.write(image_path, image, annotation)
        counts.append(len(annotation.classes))
    return counts


def _run_on_dask(todo: list, per_image: dict, folder: DatasetFolder, model: Any, scheduler: str, device, precision,
                 batch_size: int, min_score):
    """Annotate ``todo`` in Dask tasks of a few images each; yields each image's object count as tasks finish.

    The class list is complete before the tasks start (box files are read up front), so
    tasks writing YOLO indices or COCO parts in parallel agree on it.
    """
    import dask

    from napari_sam.engine.automatic.dask_runner import ModelSpec

    if not todo:
        return
    spec = ModelSpec.from_model(model)
    folder.save_manifest(complete=False)
    size = max(1, min(8, len(todo) // (4 * (os.cpu_count() or 1)) or 1))
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    tasks = [dask.delayed(_annotate_chunk)(chunk, {p: per_image[p] for p in chunk}, folder, spec, device, precision,
                                           batch_size, min_score) for chunk in chunks]
    if scheduler in LOCAL_SCHEDULERS:
        # waves of one task per core: progress after each wave, memory bounded by the wave
        wave = max(1, os.cpu_count() or 1)
        for first in range(0, len(tasks), wave):
            for counts in dask.compute(*tasks[first : first + wave], scheduler=scheduler):
                yield from counts
        return
    from distributed import Client
    from distributed import as_completed as distributed_completed

    with Client(scheduler) as client:
        for future in distributed_completed(client.compute(tasks)):
            yield from future.result()
