"""Dataset folders written one image at a time, so a run can stop and resume.

Each format keeps a file per image, written safely, whose presence means "this image is
done"; the dataset-wide files (COCO's ``annotations.json``, YOLO's ``data.yaml``) are
assembled from them at the end of every run. ``<out>/.napari-sam/dataset.json`` (the
manifest) records the run's settings, the class list and whether the dataset is complete.

Layouts of ``out``:

* ``coco``: ``annotations.json`` (file names relative to the images folder, which is not
  copied) and ``.napari-sam/parts/<stem>.json`` (one image's objects).
* ``yolo``: ``images/train/<image>`` (a copy), ``labels/train/<stem>.txt``, ``data.yaml``.
* ``tiff``: ``<stem>.tif`` and ``<stem>.csv`` (``index,class``) per image.
* ``ome-zarr``: ``<stem>.ome.zarr`` per image (the image and ``labels/objects``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_sam.engine.errors import InputError
from napari_sam.engine.export.files import write_text
from napari_sam.engine.export.instances import InstanceAnnotation, class_names_for
from napari_sam.engine.io.safe_write import (
    move_into_place,
    remove_path,
    temporary_sibling,
)

FORMATS = ("coco", "yolo", "tiff", "ome-zarr")
MANIFEST = Path(".napari-sam") / "dataset.json"
COCO_FILE = "annotations.json"


def read_manifest(out: Path) -> dict | None:
    """The manifest of a dataset folder written here, or None when there is none.

    Parameters
    ----------
    out
        The dataset folder.

    Returns
    -------
    dict or None
        ``format``, ``settings``, ``classes``, ``complete``.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class DatasetFolder:
    """One output folder of one format: which images are done, writing one, finishing.

    Parameters
    ----------
    out
        The folder (it exists).
    fmt
        One of :data:`FORMATS`.
    settings
        What made it (model, boxes, ...), kept in the manifest; a resumed run must match.
    classes
        The known class list (its order is the class index / category id order).
    segmentation
        COCO's "rle" or "polygon".
    """

    def __init__(self, out: Path, fmt: str, settings: dict, classes: Sequence[str], segmentation: str = "rle"):
        if fmt not in FORMATS:
            raise InputError(f"Unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}.")
        self.out, self.format, self.settings, self.segmentation = Path(out), fmt, dict(settings), segmentation
        self.classes = list(dict.fromkeys(classes))

    # ------------------------------------------------------------- manifest
    def save_manifest(self, complete: bool) -> None:
        """Write the manifest (format, settings, classes, ``complete``).

        Parameters
        ----------
        complete
            Whether every image is done and the dataset-wide files are written.
        """
        (self.out / MANIFEST.parent).mkdir(exist_ok=True)
        content = {"format": self.format, "settings": self.settings, "classes": self.classes, "complete": complete}
        write_text(self.out / MANIFEST, json.dumps(content, indent=1), overwrite=True)

    def add_classes(self, names: Sequence[str]) -> None:
        """Append classes not yet known (their index is fixed from now on) and save the manifest.

        Parameters
        ----------
        names
            Class names, in the order met.
        """
        new = [n for n in dict.fromkeys(names) if n not in self.classes]
        if new:
            self.classes += new
            self.save_manifest(complete=False)

    # ------------------------------------------------------------- per image
    def target(self, image: Path) -> Path:
        """The file whose presence says ``image`` is done.

        Parameters
        ----------
        image
            The input image.

        Returns
        -------
        Path
            Inside the folder.
        """
        if self.format == "coco":
            return self.out / MANIFEST.parent / "parts" / f"{image.stem}.json"
        if self.format == "yolo":
            return self.out / "labels" / "train" / f"{image.stem}.txt"
        if self.format == "tiff":
            return self.out / f"{image.stem}.tif"
        return self.out / f"{image.stem}.ome.zarr"

    def is_done(self, image: Path) -> bool:
        """Whether ``image`` was annotated by an earlier (or this) run.

        Parameters
        ----------
        image
            The input image.

        Returns
        -------
        bool
            Its file exists (complete: files appear only when written in full).
        """
        return self.target(image).exists()

    def write(self, image_path: Path, image: np.ndarray, annotation: InstanceAnnotation) -> None:
        """Write one image's annotation (and, for YOLO, a copy of the image).

        Parameters
        ----------
        image_path
            The input image's file.
        image
            Its pixels (OME-Zarr stores them).
        annotation
            Its labels and classes.
        """
        from napari_sam.engine.export import coco, label_images, ome_zarr, yolo

        target = self.target(image_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.add_classes(class_names_for([annotation]))
        if self.format == "coco":
            objects = coco.object_annotations(annotation.labels, annotation.classes, self.classes, 0,
                                              segmentation=self.segmentation)
            for item in objects:
                item["class"] = self.classes[item.pop("category_id") - 1]
            height, width = annotation.labels.shape
            part = {"file_name": image_path.name, "height": height, "width": width, "objects": objects}
            write_text(target, json.dumps(part), overwrite=True)
        elif self.format == "yolo":
            copy = self.out / "images" / "train" / image_path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            if not copy.exists():
                temporary = temporary_sibling(copy)
                try:
                    shutil.copyfile(image_path, temporary)
                    move_into_place(temporary, copy)
                finally:
                    remove_path(temporary)
            yolo.save_yolo_txt(target, annotation.labels, annotation.classes, self.classes, overwrite=True)
        elif self.format == "tiff":
            label_images.save_label_image(target, annotation.labels, annotation.classes, overwrite=True)
        else:
            ome_zarr.save_ome_zarr(target, annotation.labels, annotation.classes, image=image, overwrite=True)

    # ------------------------------------------------------------- finish
    def finish(self, images: Sequence[Path]) -> list[Path]:
        """Write the dataset-wide files from the per-image ones and mark the dataset complete.

        Parameters
        ----------
        images
            Every image of the dataset, in order (COCO image ids follow it).

        Returns
        -------
        list of Path
            The dataset-wide files written (none for TIFF and OME-Zarr).
        """
        from napari_sam.engine.export import yolo

        written = []
        if self.format == "coco":
            written.append(self._assemble_coco(images))
        elif self.format == "yolo":
            written.append(yolo.save_data_yaml(self.out, self.classes, overwrite=True))
        self.save_manifest(complete=True)
        return written

    def _assemble_coco(self, images: Sequence[Path]) -> Path:
        category = {name: k + 1 for k, name in enumerate(self.classes)}
        coco_images, annotations = [], []
        for image_id, image_path in enumerate(images, start=1):
            part = json.loads(self.target(image_path).read_text(encoding="utf-8"))
            coco_images.append({"id": image_id, "file_name": part["file_name"], "height": part["height"],
                                "width": part["width"]})
            for item in part["objects"]:
                item = dict(item, id=len(annotations) + 1, image_id=image_id, category_id=category[item["class"]])
                del item["class"]
                annotations.append(item)
        categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in enumerate(self.classes)]
        dataset = {"images": coco_images, "annotations": annotations, "categories": categories}
        return write_text(self.out / COCO_FILE, json.dumps(dataset), overwrite=True)
