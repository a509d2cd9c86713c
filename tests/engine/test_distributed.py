"""Tiles as Dask tasks: a LocalCluster of two worker processes gives the local result."""

from __future__ import annotations

import numpy as np

from napari_sam.engine.automatic.segment import segment_everything
from napari_sam.engine.datasets.synthetic import synthetic_image


def test_local_cluster_gives_the_same_labels_as_the_local_path(cluster, tiny_model):
    from distributed import Client

    # four one-tile slices: four independent tasks spread over both workers (a random-weight model
    # proposes whole-window blobs, which survive only in windows without inner edges)
    stack = np.stack([synthetic_image((200, 240), seed=s).image for s in (1, 2, 3, 4)])
    settings = dict(tile_shape=256, halo=32, points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0)
    local = segment_everything(stack, tiny_model, **settings)
    remote = segment_everything(stack, tiny_model, scheduler=cluster.scheduler_address, **settings)
    assert local.shape == remote.shape == (4, 200, 240)
    assert local.max() >= 4  # every slice holds objects: the comparison is not between empty images
    np.testing.assert_array_equal(remote, local)
    # ids stay unique across slices
    assert not set(np.unique(local[0])[1:]) & set(np.unique(local[1])[1:])
    with Client(cluster.scheduler_address) as client:
        # each worker built the model once, through the plugin; none is left registered afterwards
        plugins = client.run(lambda dask_worker: [k for k in dask_worker.plugins if k.startswith("napari-sam")])
        assert all(not names for names in plugins.values())


def test_trained_model_on_two_workers_matches_local_tiling(cluster, trained_model):
    sample = synthetic_image((256, 320), seed=11)  # two tiles
    settings = dict(tile_shape=256, halo=40, points_per_side=10, pred_iou_thresh=0.5, nested_thresh=0.8)
    local = segment_everything(sample.image, trained_model, **settings)
    remote = segment_everything(sample.image, trained_model, scheduler=cluster.scheduler_address, **settings)
    assert local.max() >= 10
    np.testing.assert_array_equal(remote, local)
