"""Screenshots of the annotator in use, for docs/usage.md (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/make_screenshots.py \
        [--model tests/data/tiny_sam_synthetic_v2.pt] [--out docs/images]

Drives the widgets as a user would (clicks through the Points layer, a box, commits;
segment everything inside a rectangle) on synthetic nuclei with the tiny model
trained here, then saves the whole window: the pictures of docs/usage.md, the
newcomer's five steps, and both widgets at a laptop size (1366 x 768) and at
1920 x 1080.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout=120.0):
    start = time.time()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - start > timeout:
            raise TimeoutError("the work did not finish")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def _centers(labels, ids):
    from scipy import ndimage

    out = []
    for i in ids:
        distance = ndimage.distance_transform_edt(labels == i)
        out.append(np.array(np.unravel_index(np.argmax(distance), labels.shape), dtype=float))
    return out


def _largest(labels, count):
    """Ids of the ``count`` objects with the largest inscribed disc that do not touch the border."""
    from scipy import ndimage

    ids = np.unique(labels[labels > 0])
    depth = ndimage.distance_transform_edt(np.pad(labels, 1) > 0)[1:-1, 1:-1]
    radii = dict(zip(ids, ndimage.maximum(depth, labels, ids), strict=True))
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    return sorted((i for i in ids if i not in border), key=lambda i: -radii[i])[:count]


def _save(viewer, path: Path) -> None:
    from skimage.io import imsave

    imsave(path, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    print(f"wrote {path}")


LAPTOP, FULL_HD = (1366, 768), (1920, 1080)


def _first_steps(app, out: Path, model: str) -> None:
    """The newcomer's five steps of docs/usage.md, at a laptop size."""
    import napari

    from napari_sam._napari.demo import open_annotator
    from napari_sam.engine.datasets.synthetic import synthetic_image

    sample = synthetic_image((256, 256), seed=21, style="mixed")
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(*LAPTOP)
    viewer.add_image(sample.image, name="nuclei", colormap="gray")
    widget = open_annotator(viewer, sample=None, model=model)
    _wait(app, lambda: widget.controller.has_embedding() and not widget.is_embedding())
    viewer.reset_view()
    _wait(app, lambda: True)
    _save(viewer, out / "step1_open.png")
    controller = widget.controller
    ids = _largest(sample.labels, 3)
    centers = _centers(sample.labels, ids)
    controller.add_point(centers[0])
    _wait(app, lambda: True)
    _save(viewer, out / "step2_click.png")
    controller.commit_and_continue()
    controller.add_point(centers[1])
    controller.commit()
    _wait(app, lambda: widget.object_list.table.rowCount() == 2)
    _save(viewer, out / "step3_commit.png")
    viewer.close()


def _at_size(app, out: Path, model: str, size: tuple[int, int]) -> None:
    """The annotator with objects committed and Segment everything docked below it, at ``size``."""
    import napari

    from napari_sam._napari.demo import open_annotator
    from napari_sam.engine.datasets.synthetic import synthetic_image

    sample = synthetic_image((256, 256), seed=21, style="mixed")
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(*size)
    viewer.add_image(sample.image, name="nuclei", colormap="gray")
    widget = open_annotator(viewer, sample=None, model=model)
    _wait(app, lambda: widget.controller.has_embedding() and not widget.is_embedding())
    controller = widget.controller
    for center in _centers(sample.labels, _largest(sample.labels, 3)):
        controller.add_point(center)
        controller.commit()
    viewer.reset_view()
    _wait(app, lambda: widget.object_list.table.rowCount() == 3)
    _save(viewer, out / f"annotator_{size[0]}x{size[1]}.png")
    _, everything = viewer.window.add_plugin_dock_widget("napari-sam", "Segment everything")
    _wait(app, lambda: True)
    viewer.reset_view()
    _wait(app, lambda: True)
    _save(viewer, out / f"both_widgets_{size[0]}x{size[1]}.png")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny_sam_synthetic_v2.pt"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam._napari.demo import open_annotator
    from napari_sam.engine.datasets.synthetic import synthetic_image, synthetic_volume

    app = QApplication.instance() or QApplication([])

    _first_steps(app, out, args.model)
    for size in (LAPTOP, FULL_HD):
        _at_size(app, out, args.model, size)

    # --- 2D: three objects committed, a fourth being refined with a negative click
    sample = synthetic_image((256, 256), seed=21, style="mixed")
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(1500, 950)
    viewer.add_image(sample.image, name="nuclei", colormap="gray")
    widget = open_annotator(viewer, sample=None, model=args.model)  # loads it as "Local checkpoint file"
    _wait(app, lambda: widget.controller.has_embedding() and not widget.is_embedding())
    controller = widget.controller
    ids = _largest(sample.labels, 6)
    centers = _centers(sample.labels, ids)
    for center in centers[:3]:
        controller.add_point(center)
        controller.commit()
    rows, cols = np.nonzero(sample.labels == ids[3])
    box = np.array([[rows.min() - 3, cols.min() - 3], [rows.max() + 3, cols.max() + 3]], dtype=float)
    controller.boxes_layer.add_rectangles(np.array([box[0], [box[0, 0], box[1, 1]], box[1], [box[1, 0], box[0, 1]]]))
    controller.commit()
    controller.add_point(centers[4])
    # a negative click just outside the object, where its neighbour starts
    rows, cols = np.nonzero(sample.labels == ids[4])
    far = np.argmax((rows - centers[4][0]) ** 2 + (cols - centers[4][1]) ** 2)
    controller.add_point(centers[4] + 1.25 * (np.array([rows[far], cols[far]]) - centers[4]), positive=False)
    viewer.reset_view()
    _wait(app, lambda: True)
    _save(viewer, out / "annotator_2d.png")

    # --- 3D stack: a slice in the middle being annotated
    viewer.close()
    volume = synthetic_volume((16, 160, 160), seed=5, z_spacing=2.0)
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(1500, 950)
    viewer.add_image(volume.image, name="nuclei stack", scale=(2.0, 1.0, 1.0), colormap="gray")
    viewer.dims.set_point(0, 8 * 2.0)
    widget = open_annotator(viewer, sample=None, model=args.model)
    _wait(app, lambda: widget.controller.has_embedding() and not widget.is_embedding())
    controller = widget.controller
    plane = volume.labels[8]
    for center in _centers(plane, _largest(plane, 3)):
        controller.add_point([8, *center])
        controller.commit()
    controller.add_point([8, *_centers(plane, _largest(plane, 4)[3:])[0]])
    viewer.reset_view()
    _wait(app, lambda: True)
    _save(viewer, out / "annotator_3d.png")
    viewer.close()

    # --- Segment everything inside a Shapes rectangle of a larger image (tiled)
    from napari_sam._napari.segment_everything_widget import SegmentEverythingWidget

    sample = synthetic_image((512, 768), seed=23, style="mixed")
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(1500, 950)
    viewer.add_image(sample.image, name="nuclei", colormap="gray")
    viewer.add_shapes([[[40, 60], [470, 60], [470, 700], [40, 700]]], shape_type="rectangle", name="region",
                      edge_color="yellow", face_color="transparent", edge_width=3)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", "Segment everything")
    assert isinstance(widget, SegmentEverythingWidget)
    widget.model_picker.choose(args.model)
    widget.tile_size.value = 256
    widget.halo.value = 48
    widget.points_per_side.value = 16
    widget.pred_iou_thresh.value = 0.5  # the test model's IoU head stays below SAM's 0.88
    widget.nested_thresh.value = 0.8
    widget.roi_choice.value = viewer.layers["region"]
    widget.run_button.native.click()
    _wait(app, lambda: not widget.is_busy())
    if not [layer for layer in viewer.layers if layer.name == "nuclei everything"]:
        raise RuntimeError(f"Segment everything gave no labels: {widget.status.value}")
    viewer.layers.selection.active = viewer.layers["region"]
    _wait(app, lambda: True)  # let the dock take its room before fitting the view to the canvas
    viewer.reset_view()
    _wait(app, lambda: True)
    _save(viewer, out / "segment_everything.png")
    viewer.close()


if __name__ == "__main__":
    main()
