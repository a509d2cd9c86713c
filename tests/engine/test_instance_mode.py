"""``segment_everything(method="instance")``: the instance decoder's maps and a seeded watershed per tile,
through the same tiling, stitching, zarr output, resume and Dask runner as automatic mask generation.

Most tests drive the real pipeline with an ORACLE decoder: the maps (foreground, distance to
the object's centre, distance to its boundary, as micro-sam's decoder is trained to predict
them) are computed from the ground-truth labels inside each window, so whatever differs between
a tiled and an untiled run comes from tiling and stitching, not from a model's mistakes. The
watershed (``instance.instances_from_maps``) runs as in real use. The trained fixture's own
quality lives in the benchmarks and in ``test_seams.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.automatic.segment import segment_everything
from napari_sam.engine.datasets.synthetic import synthetic_image
from napari_sam.engine.errors import InputError
from napari_sam.engine.metrics import match_instances


@pytest.fixture
def decoder_model():
    """A random-weight tiny SAM with an instance decoder (a config like the v2 fixture's)."""
    import dataclasses

    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.config import CONFIGS, InstanceDecoderConfig

    base = CONFIGS["tiny_vit_test"]
    config = dataclasses.replace(
        base, instance_decoder=InstanceDecoderConfig(embed_dim=base.prompt_embed_dim, initial_features=8)
    )
    torch.manual_seed(0)
    return build_sam(config).eval()


def oracle_maps(window_labels: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 maps of a window's labels: foreground, normalised distance to each object's
    centre (0 there, 1 at its far edge) and inverted distance to its boundary (0 deepest inside, 1 at the
    edge); background 0, 1, 1."""
    from scipy import ndimage

    labels = np.asarray(window_labels)
    maps = np.ones((3, *labels.shape), dtype=np.float32)
    maps[0] = labels > 0
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == label
        rows, cols = np.indices(mask.shape)
        centre = np.hypot(rows - rows[mask].mean(), cols - cols[mask].mean())
        inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        maps[1][box][mask] = (centre / max(centre[mask].max(), 1e-6))[mask]
        maps[2][box][mask] = (1 - inside / inside.max())[mask]
    return maps


@pytest.fixture
def oracle_decoder(monkeypatch):
    """Windows' decoder maps from the labels the image holds (the image IS a label image): the
    watershed, tiling and stitching run as in real use. Records each decoded window's shape."""
    from napari_sam.engine.automatic import instance, local_runner

    windows = []
    real_embed = local_runner.embed_windows

    class OracleEmbedding:
        """A window's pixels; the real embedding only when something reads it (AMG decoding prompts)."""

        def __init__(self, predictor, pixels, intensity_range):
            self.predictor, self.pixels, self.intensity_range = predictor, np.asarray(pixels), intensity_range

        def __getattr__(self, name):
            if "real" not in self.__dict__:
                self.real = real_embed(self.predictor, [self.pixels], self.intensity_range)[0]
            return getattr(self.real, name)

    def embed(predictor, pixels_list, intensity_range=None):
        return [OracleEmbedding(predictor, p, intensity_range) for p in pixels_list]

    def maps(predictor, embedding):
        windows.append(embedding.pixels.shape)
        return oracle_maps(embedding.pixels)

    monkeypatch.setattr(local_runner, "embed_windows", embed)
    monkeypatch.setattr(instance, "decoder_maps", maps)
    return windows


@pytest.fixture(scope="module")
def scene():
    # crowded objects of every size the generator makes: many cross the seams of a 256/64 grid
    return synthetic_image((448, 448), seed=3, style="mixed").labels


def _f1(a: np.ndarray, b: np.ndarray) -> float:
    tp, na, nb = match_instances(a, b)
    return 2 * tp / max(na + nb, 1)


# ------------------------------------------------------------------ choosing the method
def test_an_unknown_method_is_an_input_error_before_any_work(tiny_model, tmp_path):
    image = synthetic_image((64, 64), seed=1).image
    with pytest.raises(InputError, match="'instance'.*'amg'.*got 'watershed'"):
        segment_everything(image, tiny_model, method="watershed", out=tmp_path / "labels.zarr")
    assert not (tmp_path / "labels.zarr").exists()


def test_instance_mode_on_a_model_without_decoder_names_one_that_has_it(tiny_model):
    image = synthetic_image((64, 64), seed=1).image
    with pytest.raises(InputError, match="instance decoder, e.g. vit_b_lm") as caught:
        segment_everything(image, tiny_model, method="instance")
    assert "amg" in str(caught.value)  # and what to do instead


def test_the_default_is_instance_mode_for_a_model_with_a_decoder(decoder_model, oracle_decoder, scene):
    default = segment_everything(scene, decoder_model, tile_shape=256, halo=64)
    assert oracle_decoder  # the decoder's maps were used, not SAM prompts
    assert _f1(scene, default) >= 0.95
    np.testing.assert_array_equal(default, segment_everything(scene, decoder_model, tile_shape=256, halo=64,
                                                              method="instance"))
    # asked for explicitly, AMG runs on the same model and decodes prompts instead
    calls = len(oracle_decoder)
    segment_everything(scene[:256, :256], decoder_model, method="amg", points_per_side=2)
    assert len(oracle_decoder) == calls


def test_the_default_is_amg_for_a_model_without_decoder(tiny_model):
    image = synthetic_image((200, 240), seed=2).image
    loose = dict(points_per_side=4, pred_iou_thresh=0.0, stability_thresh=0.0)
    default = segment_everything(image, tiny_model, **loose)
    assert default.max() >= 1
    np.testing.assert_array_equal(default, segment_everything(image, tiny_model, method="amg", **loose))


# ------------------------------------------------------------------ tiling and stitching
@pytest.mark.parametrize("offset", [0, 37], ids=["grid at 0", "grid shifted by 37 px"])
def test_tiled_instance_mode_finds_the_objects_one_window_over_the_whole_image_finds(
    decoder_model, oracle_decoder, scene, offset
):
    """A halo wider than the objects: every object is whole in some window, kept from one of them."""
    from scipy import ndimage

    untiled = segment_everything(scene, decoder_model, tile_shape=448, halo=0)  # one window sees everything
    assert oracle_decoder == [(448, 448)]
    tiled = segment_everything(scene, decoder_model, tile_shape=256, halo=64, tile_offset=offset)
    assert len(oracle_decoder) == 1 + 16  # cores of 128 px: 4 x 4 tiles (the shifted grid too)
    assert untiled.max() >= 60 and _f1(scene, untiled) >= 0.95  # the oracle's maps give the truth back
    tp, n_untiled, n_tiled = match_instances(untiled, tiled, iou_thresh=0.9)
    assert n_tiled == n_untiled and tp >= n_untiled - 1, (tp, n_untiled, n_tiled)
    # the objects crossing a seam (the ones tiling could lose or split) are among them
    seams = [128 - offset % 128 + k * 128 for k in range(4)]
    crossing = [
        label for label, box in enumerate(ndimage.find_objects(untiled), start=1)
        if any(box[0].start < s < box[0].stop or box[1].start < s < box[1].stop for s in seams)
    ]
    assert len(crossing) >= 15
    tp_seams, _, _ = match_instances(np.where(np.isin(untiled, crossing), untiled, 0), tiled, iou_thresh=0.9)
    assert tp_seams >= len(crossing) - 1


def test_an_interrupted_instance_run_resumes_with_instance_mode_only(decoder_model, oracle_decoder, tmp_path):
    import zarr

    scene = synthetic_image((256, 1024), seed=5, style="mixed").labels  # one row of 8 tiles
    settings = dict(tile_shape=256, halo=64)
    reference = segment_everything(scene, decoder_model, **settings)
    out = tmp_path / "labels.zarr"

    def stop_after(n):
        def progress(done, total):
            if done >= n:
                raise KeyboardInterrupt

        return progress

    with pytest.raises(KeyboardInterrupt):
        segment_everything(scene, decoder_model, out=out, progress=stop_after(5), **settings)
    info = zarr.open_array(str(out), mode="r").attrs["napari_sam"]
    assert info["complete"] is False and info["run"]["method"] == "instance" and 0 < info["tiles_done"] < 8
    # the other method would mix two kinds of labels in one output: refused, saying so
    with pytest.raises(InputError, match="method: instance there, amg now"):
        segment_everything(scene, decoder_model, out=out, resume=True, method="amg", **settings)
    # so are other instance settings
    from napari_sam.engine.automatic.instance import InstanceParams

    with pytest.raises(InputError, match="foreground_threshold"):
        segment_everything(scene, decoder_model, out=out, resume=True,
                           instance_params=InstanceParams(foreground_threshold=0.3), **settings)
    labels = segment_everything(scene, decoder_model, out=out, resume=True, **settings)
    np.testing.assert_array_equal(np.asarray(labels[:]), reference)
    assert zarr.open_array(str(out), mode="r").attrs["napari_sam"]["complete"] is True


def test_a_record_written_before_methods_existed_resumes_as_amg():
    from napari_sam.engine.automatic.resume import _differences

    old = {"params": {"points_per_side": 32}, "halo": [32, 32]}
    assert _differences({"method": "amg", **old}, {"method": "amg", **old}) == []
    assert _differences({"method": "amg", **old}, {"method": "instance", "params": {}, "halo": [32, 32]}) == [
        "method: amg there, instance now"
    ]


def test_bad_instance_settings_are_an_input_error(decoder_model):
    from napari_sam.engine.automatic.instance import InstanceParams

    with pytest.raises(InputError, match="foreground_threshold"):
        segment_everything(np.zeros((64, 64), np.uint8), decoder_model,
                           instance_params=InstanceParams(foreground_threshold=1.5))


# ------------------------------------------------------------------ Dask


@pytest.mark.filterwarnings("ignore:The image of shape:UserWarning")  # four slices, not channels
def test_instance_mode_on_a_local_cluster_gives_the_local_labels(cluster, decoder_model):
    from napari_sam.engine.automatic.instance import InstanceParams

    # the real decoder (random weights; the oracle cannot reach worker processes): four one-tile slices
    stack = np.stack([synthetic_image((200, 240), seed=s).image for s in (1, 2, 3, 4)])
    params = InstanceParams(foreground_threshold=0.55)  # random weights: the foreground map lies around 0.57
    local = segment_everything(stack, decoder_model, tile_shape=256, halo=32, instance_params=params)
    remote = segment_everything(stack, decoder_model, tile_shape=256, halo=32, instance_params=params,
                                scheduler=cluster.scheduler_address)
    assert local.max() >= 4  # objects in every slice: not a comparison of empty images
    np.testing.assert_array_equal(remote, local)
