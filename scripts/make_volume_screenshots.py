"""Screenshots of Propagate and Segment volume at a laptop size (1366 x 768), for docs/usage.md.

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/make_volume_screenshots.py \
        [--model tests/data/tiny_sam_synthetic_v2.pt] [--out docs/images] [--only propagate|volume]

Drives the widgets as a user would on a synthetic stack with the tiny model trained here:
a click on one slice and Propagate (the 2D view with the propagation preview, then the
3D view), and Segment everything with "Link planes into 3D objects" checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_screenshots import LAPTOP, _centers, _largest, _save, _wait  # noqa: E402


def _show_in_dock(dock, child) -> None:
    """Scroll ``dock``'s column so that ``child`` (and what follows it) is in sight."""
    from qtpy.QtWidgets import QScrollArea

    scroll = dock.findChild(QScrollArea)
    scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    scroll.ensureWidgetVisible(child)


def _propagate(app, out: Path, model: str) -> None:
    import napari

    from napari_sam._napari.demo import open_annotator
    from napari_sam.engine.datasets.synthetic import synthetic_volume

    volume = synthetic_volume((16, 160, 160), seed=5, z_spacing=2.0)
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(*LAPTOP)
    viewer.add_image(volume.image, name="nuclei stack", scale=(2.0, 1.0, 1.0), colormap="gray")
    widget = open_annotator(viewer, sample=None, model=model)
    # the tallest object inside the image, clicked on its widest slice
    inside = set(_largest(volume.labels.max(axis=0), 100))  # ids whose projection misses the border
    ids = [i for i in np.unique(volume.labels[volume.labels > 0]) if i in inside]
    extents = [(volume.labels == i).any(axis=(1, 2)).sum() for i in ids]
    target = int(ids[int(np.argmax(extents))])
    z = int(np.argmax((volume.labels == target).sum(axis=(1, 2))))
    viewer.dims.set_point(0, z * 2.0)
    _wait(app, lambda: widget.controller.has_embedding() and not widget.is_embedding())
    widget.controller.add_point([z, *_centers(volume.labels[z], [target])[0]])
    widget.propagation_panel.propagate_button.native.click()
    _wait(app, lambda: not widget.propagation_panel.is_running())
    viewer.reset_view()
    _show_in_dock(widget, widget.propagation_panel)
    _wait(app, lambda: True)
    _save(viewer, out / "propagate_1366x768.png")
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (0, 35, 60)
    _wait(app, lambda: True)
    _save(viewer, out / "propagate_3d_1366x768.png")
    viewer.close()


def _segment_volume(app, out: Path, model: str) -> None:
    import napari

    from napari_sam._napari.segment_everything_widget import SegmentEverythingWidget
    from napari_sam.engine.datasets.synthetic import synthetic_volume

    volume = synthetic_volume((6, 160, 160), seed=5, z_spacing=2.0)
    viewer = napari.Viewer(title="napari-sam")
    viewer.window.resize(*LAPTOP)
    viewer.add_image(volume.image, name="nuclei stack", scale=(2.0, 1.0, 1.0), colormap="gray")
    viewer.dims.set_point(0, 4 * 2.0)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam", "Segment everything")
    assert isinstance(widget, SegmentEverythingWidget)
    widget.model_picker.choose(model)
    widget.points_per_side.value = 16
    widget.pred_iou_thresh.value = 0.5  # the test model's IoU head stays below SAM's 0.88
    widget.link_planes.value = True
    widget.run_button.native.click()
    _wait(app, lambda: not widget.is_busy(), timeout=900)
    viewer.reset_view()
    _wait(app, lambda: True)
    _save(viewer, out / "segment_volume_1366x768.png")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny_sam_synthetic_v2.pt"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--only", choices=("propagate", "volume"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    if args.only in (None, "propagate"):
        _propagate(app, out, args.model)
    if args.only in (None, "volume"):
        _segment_volume(app, out, args.model)


if __name__ == "__main__":
    main()
