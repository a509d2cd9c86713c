"""Does the intensity window matter? Box-prompt IoU on synthetic CT lesions, per window (quality, not speed).

    python benchmarks/bench_windows.py [--seeds 3] [--model tests/data/tiny_sam_synthetic.pt]

For each synthetic CT (engine.datasets.synthetic_ct: an organ at 60 HU holding lesions at 150 HU,
noise 12 HU), every plane holding a lesion is embedded once per window and each lesion is prompted
with its bounding box; the mean IoU with the true lesion is printed per window, against full-range
scaling (min to max of the volume) measured in the same run. The tiny model was trained on
synthetic fluorescence images, not on CT: the numbers say how much the window helps it, not how
well a real model segments CT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny_sam_synthetic.pt"))
    args = parser.parse_args()

    from napari_sam.engine import Predictor
    from napari_sam.engine.datasets.synthetic_ct import synthetic_ct
    from napari_sam.engine.metrics import mask_iou
    from napari_sam.engine.predict.windows import parse_window, window_range
    from napari_sam.model import load_model

    predictor = Predictor(load_model(args.model, device="cpu"), device="cpu", precision="fp32")
    names = ("full range", "auto", "abdomen", "liver", "mediastinum", "lung")
    ious: dict[str, list[float]] = {name: [] for name in names}
    for seed in range(args.seeds):
        ct = synthetic_ct(seed=seed)
        for name in names:
            if name == "full range":
                value_range = (float(ct.image.min()), float(ct.image.max()))
            else:
                value_range = window_range(parse_window(name), ct.image)
            for z in range(len(ct.image)):
                ids = [int(i) for i in np.unique(ct.lesions[z]) if i]
                if not ids:
                    continue
                predictor.set_image(ct.image[z], intensity_range=value_range)
                for i in ids:
                    truth = ct.lesions[z] == i
                    if truth.sum() < 20:  # a lesion's tip on a plane: a few pixels, no box to speak of
                        continue
                    rows, cols = np.nonzero(truth)
                    masks, _, _ = predictor.predict(
                        box=[rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], multimask=False
                    )
                    ious[name].append(mask_iou(masks[0], truth))
    base = np.mean(ious["full range"])
    print(f"{args.seeds} synthetic CTs, {len(ious['full range'])} lesion cross-sections, box prompts")
    for name in names:
        print(f"{name:>12}: mean IoU {np.mean(ious[name]):.3f}  ({np.mean(ious[name]) - base:+.3f} vs full range)")


if __name__ == "__main__":
    main()
