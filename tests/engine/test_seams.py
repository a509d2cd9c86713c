"""Seam objects (crossing a core border) are found as often as interior ones, border by border.

What was measured (``benchmarks/bench_seams.py``, trained tiny model, tile 256, halo 64,
32 points, thresholds 0.5/0.95, two 512 x 512 images): each object is seen whole by
several windows, and the model segments it well in at least one of them 90-93% of the
time, but only 62-73% of the time in the window owning its centroid, mostly returning a
PART of it there. The old rank kept the owner's version, so larger objects -- and seam
objects are larger on average -- were lost more: seams 0.60 against 0.70 for interior
objects. Ranking whole-and-convex versions first (``stitching`` rule 2) keeps the whole
version: seams 0.72, interior 0.73 (ratio 0.98 pooled; per border 0.78-1.09 with 12-19 seam
objects per border, too few to judge one border). Those two images chose the rank's settings; with a
third, held-out one (seed 502) the three give seams 0.59 -> 0.68, interior 0.69 -> 0.71, pooled ratio
0.86 -> 0.96, worst border 0.54 -> 0.67 (19-27 seam objects per border). The same run with the trained model costs minutes,
so it lives in the benchmark; here a segmenter that fails the way the model was measured to fail
(parts, more often for larger objects) drives the real stitcher with enough objects per border.

With the trained fixture v2 (end of this file) both automatic masks and instance mode run through the real
runner and stitcher on four crowded images, pooled border by border (about 90 seam objects per border).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.automatic.stitching import (
    Stitcher,
    surviving_candidates,
    tile_candidates,
)
from napari_sam.engine.automatic.tiling import make_tile_grid
from napari_sam.engine.datasets.synthetic import synthetic_image


def _border_recalls(truth: np.ndarray, found: np.ndarray, grid) -> tuple[float, dict[str, tuple[int, int]]]:
    """(interior recall, {border: (seam objects crossing it, found)}) at IoU >= 0.5."""
    (n, hit), borders = _border_counts(truth, found, grid)
    return hit / n, borders


def _border_counts(truth: np.ndarray, found: np.ndarray, grid) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
    """((interior objects, found), {border: (seam objects crossing it, found)}) at IoU >= 0.5."""
    from scipy import ndimage

    t = truth.ravel().astype(np.int64)
    f = found.ravel().astype(np.int64)
    n = int(t.max())
    best = np.zeros(n + 1)
    both = (t > 0) & (f > 0)
    area_t, area_f = np.bincount(t, minlength=n + 1), np.bincount(f)
    pairs, inter = np.unique(np.stack([t[both], f[both]]), axis=1, return_counts=True)
    np.maximum.at(best, pairs[0], inter / (area_t[pairs[0]] + area_f[pairs[1]] - inter))
    rows = sorted({tile.core[1] for tile in grid})[:-1]
    cols = sorted({tile.core[3] for tile in grid})[:-1]
    borders = {f"row {b}": [0, 0] for b in rows} | {f"col {b}": [0, 0] for b in cols}
    interior = [0, 0]
    for label, slices in enumerate(ndimage.find_objects(truth), start=1):
        if slices is None:
            continue
        mask = truth[slices] == label
        r0, c0 = slices[0].start, slices[1].start
        crossed = [f"row {b}" for b in rows if mask[: max(b - r0, 0)].any() and mask[max(b - r0, 0) :].any()]
        crossed += [f"col {b}" for b in cols if mask[:, : max(b - c0, 0)].any() and mask[:, max(b - c0, 0) :].any()]
        for name in crossed:
            borders[name][0] += 1
            borders[name][1] += int(best[label] >= 0.5)
        if not crossed:
            interior[0] += 1
            interior[1] += int(best[label] >= 0.5)
    return tuple(interior), {k: tuple(v) for k, v in borders.items()}


def _worst_ratio(truth, found, grid) -> float:
    interior, borders = _border_recalls(truth, found, grid)
    assert min(n for n, _ in borders.values()) >= 10, borders  # enough seam objects at every border to judge
    return min(hit / n for n, hit in borders.values()) / interior


def _unreliable_window_labels(truth: np.ndarray, tile, seed: int = 0) -> np.ndarray:
    """A segmenter like the trained model, as measured: each window returns an object whole with a
    probability that falls with its size (0.85 below 600 px, 0.5 above), else only a part of it
    (the half on one side of its centroid; the other half as a second label or nothing).
    Deterministic per (object, window), independent of the order tiles run in."""
    from scipy import ndimage

    r0, r1, c0, c1 = tile.window
    crop = truth[r0:r1, c0:c1]
    areas = np.bincount(truth.ravel())
    out = np.zeros(crop.shape, dtype=np.int32)
    next_label = 1
    for label, slices in enumerate(ndimage.find_objects(crop), start=1):
        if slices is None:
            continue
        mask = crop[slices] == label
        rng = np.random.default_rng([seed, label, tile.index])
        whole = rng.random() < (0.85 if areas[label] < 600 else 0.5)
        view = out[slices]
        if whole:
            view[mask] = next_label
            next_label += 1
            continue
        rows = np.nonzero(mask)[0]
        first_half = mask & (np.arange(mask.shape[0])[:, None] < rows.mean())
        view[first_half] = next_label
        next_label += 1
        if rng.random() < 0.5:
            view[mask & ~first_half] = next_label
            next_label += 1
    return out


def _stitch(truth, grid, convex_enough="default"):
    out = np.zeros(truth.shape, dtype=np.int32)
    options = {} if convex_enough == "default" else {"convex_enough": convex_enough}
    stitcher = Stitcher(grid, out, **options)
    for tile in grid:
        stitcher.add(tile.index, _unreliable_window_labels(truth, tile))
    assert stitcher.done
    return out


def test_seam_objects_found_as_often_as_interior_ones_at_every_border_when_windows_disagree():
    # crowded nuclei: at least 16 seam objects at every border (measured), enough to judge each border
    truth = synthetic_image((768, 768), seed=11, style="dense_nuclei").labels
    grid = make_tile_grid(truth.shape, 256, 64)  # seams every 128 px: 5 row and 5 column borders
    assert _worst_ratio(truth, _stitch(truth, grid), grid) >= 0.95
    # the rank it replaced (the version of the window owning the centroid) loses seam objects
    assert _worst_ratio(truth, _stitch(truth, grid, convex_enough=None), grid) < 0.9


def test_the_whole_version_beats_a_part_even_from_the_window_owning_the_object():
    grid = make_tile_grid((256, 600), 256, 64)  # one row of tiles, cores of 128 columns: the first border at column 128
    left, right = grid.tiles[0], grid.tiles[1]
    owner = np.zeros(right.window_shape, dtype=np.int32)
    other = np.zeros(left.window_shape, dtype=np.int32)
    rows, cols = np.ogrid[:256, :600]
    disc = (rows - 150) ** 2 + (cols - 140) ** 2 < 18**2  # centroid in the right tile's core (columns 128-255)
    assert right.core[2] <= 140 < right.core[3]
    part = disc & (cols < 140)
    owner[part[right.window[0] : right.window[1], right.window[2] : right.window[3]]] = 1
    other[disc[left.window[0] : left.window[1], left.window[2] : left.window[3]]] = 1
    a = tile_candidates(right, owner, (256, 600))
    b = tile_candidates(left, other, (256, 600))
    assert surviving_candidates(a, b) == [] and len(surviving_candidates(b, a)) == 1
    # the old rank kept the owner's part
    a_old = tile_candidates(right, owner, (256, 600), convex_enough=None)
    b_old = tile_candidates(left, other, (256, 600), convex_enough=None)
    assert len(surviving_candidates(a_old, b_old)) == 1 and surviving_candidates(b_old, a_old) == []


def test_a_merge_of_two_objects_joined_by_a_neck_does_not_beat_them_for_being_larger():
    """The convexity guard of rule 2 (it does not catch two round objects touching along a wide
    front: their union is convex enough, see stitching.CONVEX_ENOUGH)."""
    from napari_sam.engine.automatic.stitching import CONVEX_ENOUGH, solidity

    grid = make_tile_grid((256, 600), 256, 64)
    left, right = grid.tiles[0], grid.tiles[1]
    rows, cols = np.ogrid[:256, :600]
    one = (rows - 150) ** 2 + (cols - 110) ** 2 < 15**2
    two = (rows - 150) ** 2 + (cols - 150) ** 2 < 15**2
    neck = (abs(rows - 150) < 3) & (cols >= 110) & (cols < 150)
    assert solidity(one | two | neck) < CONVEX_ENOUGH < min(solidity(one), solidity(two))
    separate = np.zeros(left.window_shape, dtype=np.int32)
    crop = (slice(left.window[0], left.window[1]), slice(left.window[2], left.window[3]))
    separate[one[crop]] = 1
    separate[two[crop] & ~one[crop]] = 2
    merged = np.zeros(right.window_shape, dtype=np.int32)
    merged[(one | two | neck)[right.window[0] : right.window[1], right.window[2] : right.window[3]]] = 1
    a = tile_candidates(left, separate, (256, 600))
    b = tile_candidates(right, merged, (256, 600))
    assert [c.label for c in surviving_candidates(a, b)] == [1, 2] and surviving_candidates(b, a) == []


# ---------------------------------------------------------------- instance mode, trained fixture v2
@pytest.fixture(scope="module")
def decoder_model(trained_model_path):
    """The trained fixture v2 (tiny SAM with an instance decoder); instance mode is cheap enough to run here."""
    from napari_sam.model import load_model

    return load_model(trained_model_path, device="cpu")


def _pooled_seam_ratios(model, **settings) -> tuple[float, dict[str, int], dict[str, float]]:
    """(interior recall, {border: seam objects}, {border: seam recall / interior recall}) of ``segment_everything``
    with ``settings`` on four crowded 768 x 768 images (seeds 11-14), tile 256, halo 64, pooled border by border:
    about 90 seam objects per border, so that one object more or less moves a border's ratio by about 0.01, not
    0.05 (with the issue's single image, 16-29 per border)."""
    from napari_sam.engine.automatic.segment import segment_everything

    grid = make_tile_grid((768, 768), 256, 64)  # seams every 128 px: 5 row and 5 column borders
    interior, borders = [0, 0], {}
    for seed in (11, 12, 13, 14):
        sample = synthetic_image((768, 768), seed=seed, style="dense_nuclei")
        found = segment_everything(sample.image, model, tile_shape=256, halo=64, device="cpu", **settings)
        (n, hit), counts = _border_counts(sample.labels, found, grid)
        interior = [interior[0] + n, interior[1] + hit]
        for name, (n, hit) in counts.items():
            borders[name] = [a + b for a, b in zip(borders.get(name, (0, 0)), (n, hit))]
    recall = interior[1] / interior[0]
    return recall, {name: n for name, (n, _) in borders.items()}, {
        name: hit / n / recall for name, (n, hit) in borders.items()}


def test_instance_mode_finds_seam_objects_as_often_as_interior_ones_at_every_border(decoder_model):
    """The model's own decoder and watershed per window, the real runner and stitcher."""
    recall, counts, ratios = _pooled_seam_ratios(decoder_model, method="instance")
    assert recall >= 0.6  # the model finds the objects: the ratios compare real recalls
    assert min(counts.values()) >= 80, counts
    assert min(ratios.values()) >= 0.95, ratios  # measured: worst border 0.987


def test_automatic_masks_find_seam_objects_as_often_as_interior_ones_at_every_border(decoder_model):
    """Automatic mask generation with the trained model, the real runner and stitcher: the issue's run (tile 256,
    halo 64, thresholds 0.5 / 0.95) with 16 points per side instead of 32, four times cheaper (about 40 s an
    image on one busy core). Measured (``bench_seams.py --sizes 768 --images 4 --seed 11 --style dense_nuclei
    --points-per-side 16``): interior recall 0.45, seams 0.50, worst border 1.007 (the core-first rule it replaced:
    0.969); at 32 points on two of the images, pooled ratio 1.05-1.16."""
    recall, counts, ratios = _pooled_seam_ratios(decoder_model, method="amg", points_per_side=16,
                                                 pred_iou_thresh=0.5, stability_thresh=0.95)
    assert recall >= 0.4  # 16 points per 256 px miss many crowded nuclei; the ratios compare real recalls
    assert min(counts.values()) >= 80, counts
    assert min(ratios.values()) >= 0.95, ratios


def test_instance_mode_shifted_grid_agreement_comes_within_003_of_the_models_own(decoder_model):
    """Two tiled runs whose seams lie 40 px apart agree (nearly) as well as the model agrees with itself
    on one window moved by 40 px: the seams add (almost) no disagreement of their own."""
    from napari_sam.engine.automatic.agreement import (
        label_agreement,
        translation_agreement,
    )
    from napari_sam.engine.automatic.instance import InstanceParams
    from napari_sam.engine.automatic.segment import segment_everything
    from napari_sam.engine.automatic.tiling import global_intensity_range, segment_tile
    from napari_sam.engine.predict.predictor import Predictor

    image = synthetic_image((512, 512), seed=12, style="mixed").image
    shift, params = 40, InstanceParams()
    predictor = Predictor(decoder_model, device="cpu")
    value_range = global_intensity_range(image, has_channels=False)

    def segment_window(pixels, window):
        return segment_tile(predictor, pixels, params, value_range, window, (256, 256))

    starts = range(0, 512 - 256 - shift + 1, 128)
    own = translation_agreement(image, segment_window, (256, 256), shift, [(r, c) for r in starts for c in starts])
    runs = [segment_everything(image, decoder_model, tile_shape=256, halo=64, tile_offset=offset, method="instance",
                               instance_params=params, device="cpu") for offset in (0, shift)]
    tiled = label_agreement(*runs)
    assert own[1] >= 100 and tiled[1] >= 100  # enough objects to tell 0.03 apart
    assert tiled[0] / tiled[1] >= own[0] / own[1] - 0.03, (tiled, own)
