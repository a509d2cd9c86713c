"""The filter report of automatic segmentation: counts that add up, and a suggestion that finds more."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.automatic.diagnostics import (
    BINS,
    FilterReport,
    histogram_percentile,
)
from napari_sam.engine.automatic.segment import segment_everything
from napari_sam.engine.automatic.tiling import make_tile_grid
from napari_sam.engine.datasets.synthetic import synthetic_image
from napari_sam.engine.errors import InputError
from napari_sam.engine.metrics import f1_score


def test_histogram_percentile_is_a_bin_edge_that_keeps_the_rest():
    hist = np.zeros(BINS, dtype=np.int64)
    hist[[10, 50, 70, 90]] = [25, 25, 25, 25]
    assert histogram_percentile(hist, 75) == 0.9
    assert histogram_percentile(hist, 50) == 0.7
    assert histogram_percentile(np.zeros(BINS, dtype=np.int64), 50) is None


def test_reports_of_tiles_add_up():
    a, b = FilterReport(0.88, 0.95, decoded=30, below_iou=20, kept=10), FilterReport(0.88, 0.95, decoded=6, kept=6)
    a.iou_hist[3] = 30
    b.iou_hist[3] = 6
    a.merge(b)
    assert (a.decoded, a.below_iou, a.kept, int(a.iou_hist[3])) == (36, 20, 16, 36)


def test_counts_add_up_and_the_suggested_threshold_finds_more(trained_model):
    sample = synthetic_image((256, 256), seed=41)
    strict = FilterReport()
    # the fixture has an instance decoder: ask for automatic masks, the method the report is about
    labels = segment_everything(sample.image, trained_model, points_per_side=12, report=strict, device="cpu",
                                method="amg")
    # every decoded mask is rejected by exactly one filter or kept
    assert strict.decoded == 3 * (12 * 12 - strict.skipped_points)
    assert strict.rejected + strict.kept == strict.decoded
    assert int(strict.iou_hist.sum()) == strict.decoded
    assert strict.kept == labels.max()  # one tile: nothing merged at seams
    assert strict.below_iou > strict.kept  # SAM's 0.88 is too strict for this model...
    suggested = strict.suggest()["pred_iou_thresh"]
    assert 0.3 < suggested < 0.88
    assert f"Try predicted IoU {suggested:.2f}" in strict.describe()
    assert "below predicted IoU 0.88" in strict.describe()

    relaxed = FilterReport()
    found = segment_everything(
        sample.image, trained_model, points_per_side=12, pred_iou_thresh=suggested, report=relaxed, device="cpu",
        method="amg",
    )
    assert relaxed.rejected + relaxed.kept == relaxed.decoded
    assert relaxed.below_iou < strict.below_iou
    assert found.max() > labels.max() + 5  # ...and its suggestion finds the nuclei
    assert f1_score(sample.labels, found) > f1_score(sample.labels, labels) + 0.3


def test_a_report_sums_over_tiles_and_planes(tiny_model):
    stack = np.stack([synthetic_image((300, 300), seed=s).image for s in (1, 2)])
    report = FilterReport()
    with pytest.warns(UserWarning, match="stack of 2"):
        segment_everything(
            stack, tiny_model, tile_shape=256, halo=32, points_per_side=4, pred_iou_thresh=0, stability_thresh=0,
            report=report,
        )
    tiles = len(make_tile_grid((300, 300), 256, 32, min_tile=256))
    assert tiles == 4 and report.tiles == 2 * tiles  # every tile of every plane
    assert report.rejected + report.kept == report.decoded > 0


def test_preview_window_is_one_tile_around_the_region():
    from napari_sam.engine.automatic.preview import preview_window

    region, window = preview_window((1000, 300), (100, 900, 0, 300), (256, 256))
    assert region == (372, 628, 22, 278)  # cut to one tile around the centre
    assert window == (372, 628, 22, 278)
    region, window = preview_window((1000, 300), (0, 100, 0, 100), (256, 256))
    assert region == (0, 100, 0, 100) and window == (0, 256, 0, 256)  # moved inside the image


def test_preview_segments_a_region_with_the_full_runs_scale(trained_model):
    from napari_sam.engine.automatic.params import AutomaticParams
    from napari_sam.engine.automatic.preview import preview_labels

    sample = synthetic_image((512, 512), seed=61)
    report = FilterReport()
    params = AutomaticParams(points_per_side=16, pred_iou_thresh=0.5)
    region, labels = preview_labels(sample.image, trained_model, (128, 384, 128, 384), params=params, report=report,
                                    method="amg")
    assert region == (128, 384, 128, 384) and labels.shape == (256, 256) and labels.dtype == np.int32
    assert report.tiles == 1 and report.kept >= labels.max() >= 10
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))  # consecutive ids
    assert f1_score(sample.labels[128:384, 128:384], labels) > 0.45


def test_a_preview_with_a_decoder_model_uses_instance_mode_and_finds_the_full_runs_objects(trained_model):
    from napari_sam.engine.automatic.preview import preview_labels
    from napari_sam.engine.metrics import match_instances

    sample = synthetic_image((512, 512), seed=61)
    box = (128, 384, 128, 384)
    region, labels = preview_labels(sample.image, trained_model, box, device="cpu")  # the model decides: instance
    _, explicit = preview_labels(sample.image, trained_model, box, device="cpu", method="instance")
    np.testing.assert_array_equal(labels, explicit)
    assert region == box and labels.dtype == np.int32 and labels.max() >= 10
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))  # consecutive ids
    assert f1_score(sample.labels[128:384, 128:384], labels) > 0.8
    full = segment_everything(sample.image, trained_model, tile_shape=256, halo=32, device="cpu")
    matched, in_preview, in_full = match_instances(labels, full[128:384, 128:384], iou_thresh=0.8)
    assert matched >= 0.85 * max(in_preview, in_full)  # the full run's objects there (windows differ at the edges)
    with pytest.raises(InputError, match="instance decoder"):
        from napari_sam.model import build_sam

        preview_labels(sample.image, build_sam("tiny_vit_test").eval(), box, method="instance")
