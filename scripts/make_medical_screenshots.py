"""Screenshots of the medical workflow for docs/medical.md (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/make_medical_screenshots.py [--out docs/images]

A synthetic CT saved as NIfTI (0.7 x 0.7 x 2.5 mm, flipped axis) is opened through the plugin's
reader, the annotator gets the tiny model trained here, the liver window is chosen and a lesion
is boxed; the whole window at 1366 x 768 is saved, and the Setup section with a custom
width/level (Qt grab).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from make_screenshots import (  # this script's folder is on the path when it runs
    LAPTOP,
    _wait,
)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny_sam_synthetic_v2.pt"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    import nibabel as nib
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_sam._napari.demo import PLUGIN, WIDGET
    from napari_sam.engine.datasets.synthetic_ct import synthetic_ct
    from napari_sam.model import load_model

    ct = synthetic_ct(shape=(12, 160, 160), n_lesions=3, seed=1)
    folder = Path(tempfile.mkdtemp())
    affine = np.diag([-0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (60.0, -40.0, 10.0)
    path = folder / "abdomen_ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ct.image[:, ::-1, :].transpose(2, 1, 0)), affine), path)

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title="napari-sam: CT")
    viewer.window.resize(*LAPTOP)
    [image] = viewer.open(str(path), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.set_model(load_model(args.model, device="cpu"), "tiny test model", device="cpu", precision="fp32")
    widget.window_picker.choice.value = "liver"
    label = 1
    z = int(np.argmax((ct.lesions == label).sum(axis=(1, 2))))
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    rows, cols = np.nonzero(ct.lesions[z] == label)
    r0, c0, r1, c1 = rows.min() - 2, cols.min() - 2, rows.max() + 2, cols.max() + 2
    controller = widget.controller
    controller.boxes_layer.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]))
    _wait(app, lambda: controller.preview_mask().any())
    viewer.reset_view()
    _wait(app, lambda: True)
    imsave(args.out / "medical_ct_window_1366x768.png", viewer.screenshot(canvas_only=False, flash=False),
           check_contrast=False)
    picker = widget.window_picker
    from qtpy.QtWidgets import QGroupBox

    form = picker.choice.native
    while not isinstance(form, QGroupBox):  # the Setup section the picker's fields sit in
        form = form.parentWidget()
    picker.choice.value = "custom"
    _wait(app, lambda: True)
    form.grab().save(str(args.out / "medical_window_picker_custom.png"))
    print(f"wrote {args.out}/medical_*.png")
    viewer.close()


if __name__ == "__main__":
    main()
