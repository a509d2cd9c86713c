"""Write tests/data/golden/instance_targets.npz: torch-em's instance decoder targets for a few label images.

Run in the SEPARATE oracle environment that has torch-em (never in the project's own):

    /tmp/w/venv-microsam/bin/python tools/make_instance_target_golden.py

The label images are drawn here with numpy alone (touching discs, a crescent whose centroid
lies outside it, an object cut by the image border, a one-pixel object, packed squares), and
the targets are torch_em.transform.label.PerObjectDistanceTransform's, with the settings
micro-sam trains its decoders with (foreground, centre distances, boundary distances).
tests/engine/test_finetune_instance_decoder.py compares ``instance_targets`` with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

OUTPUT = Path(__file__).parents[1] / "tests" / "data" / "golden" / "instance_targets.npz"


def label_images() -> dict[str, np.ndarray]:
    """Small int32 label images covering the cases the targets must get right."""
    rows, cols = np.mgrid[:64, :80]
    touching = np.zeros((64, 80), np.int32)
    touching[(rows - 30) ** 2 + (cols - 22) ** 2 < 15**2] = 1
    touching[(rows - 30) ** 2 + (cols - 50) ** 2 < 14**2] = 2  # overlaps 1: a straight contact border
    touching[(rows - 5) ** 2 + (cols - 75) ** 2 < 9**2] = 3  # cut by the image border
    touching[60, 3] = 4  # a single pixel

    crescent = np.zeros((64, 64), np.int32)
    outer = (rows[:, :64] - 32) ** 2 + (cols[:, :64] - 32) ** 2 < 24**2
    inner = (rows[:, :64] - 32) ** 2 + (cols[:, :64] - 42) ** 2 < 20**2
    crescent[outer & ~inner] = 7  # centroid outside the object; id not 1: ids need not be consecutive
    crescent[50:58, 50:62] = 3

    packed = np.zeros((48, 48), np.int32)
    for index, (r, c) in enumerate(np.ndindex(4, 4), start=1):
        packed[r * 12 : r * 12 + 11, c * 12 : (c + 1) * 12] = index  # rows separated by a line, columns touching

    rng = np.random.default_rng(0)
    blobs = np.zeros((96, 96), np.int32)
    big_rows, big_cols = np.mgrid[:96, :96]
    for index in range(1, 16):
        r, c = rng.uniform(8, 88, 2)
        a, b = rng.uniform(4, 12, 2)
        angle = rng.uniform(0, np.pi)
        u = (big_rows - r) * np.cos(angle) + (big_cols - c) * np.sin(angle)
        v = -(big_rows - r) * np.sin(angle) + (big_cols - c) * np.cos(angle)
        blobs[(u / a) ** 2 + (v / b) ** 2 < 1] = index  # later ellipses paint over earlier ones
    for index in range(1, 16):  # an ellipse cut in two by later ones keeps its largest piece
        pieces, count = ndimage.label(blobs == index)
        if count > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            blobs[(pieces > 0) & (pieces != 1 + sizes.argmax())] = 0
    return {"touching": touching, "crescent": crescent, "packed": packed, "blobs": blobs}


def main() -> int:
    from torch_em.transform.label import PerObjectDistanceTransform

    transform = PerObjectDistanceTransform(
        distances=True, boundary_distances=True, directed_distances=False, foreground=True, instances=False,
        min_size=0,
    )
    arrays = {}
    for name, labels in label_images().items():
        # torch-em first splits each id into its connected pieces; our label images have one piece per id
        arrays[f"{name}_labels"] = labels
        arrays[f"{name}_targets"] = transform(labels).astype(np.float32)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUTPUT, **arrays)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
