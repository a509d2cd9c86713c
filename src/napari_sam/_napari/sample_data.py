"""Sample images for trying the annotator (npe2 sample-data contributions; nothing is downloaded)."""

from __future__ import annotations


def cell_sample() -> list[tuple]:
    """scikit-image's ``cell``: a 660 x 550 uint8 phase-contrast image of a cell (ships with scikit-image)."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def coins_sample() -> list[tuple]:
    """scikit-image's ``coins``: 303 x 384 uint8, two dozen separate objects to click."""
    from skimage import data

    return [(data.coins(), {"name": "coins"}, "image")]


def nuclei_stack_sample() -> list[tuple]:
    """A synthetic 3D stack of nuclei (24 x 192 x 192 float32, z spacing 2) for trying slice-wise annotation."""
    from napari_sam.engine.datasets.synthetic import synthetic_volume

    sample = synthetic_volume(shape=(24, 192, 192), seed=3, style="mixed", z_spacing=2.0)
    return [(sample.image, {"name": "synthetic nuclei", "scale": (2.0, 1.0, 1.0)}, "image")]
