"""COCO and YOLO-seg through npe2, as napari's File > Save Layers and File > Open call them,
checked with independent readers (pycocotools; a plain parser of the YOLO convention)."""

from __future__ import annotations

import npe2
import numpy as np
import pytest
import tifffile
from napari.layers import Labels
from skimage import draw

from napari_sam._napari import dataset_io
from napari_sam._napari.controller import AnnotatorController
from napari_sam.engine.datasets.synthetic import synthetic_image
from napari_sam.engine.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def plugin(npe2pm):
    """npe2's test plugin manager (discovery blocked) with this plugin registered, as napari would find it."""
    npe2pm.register(npe2.PluginManifest.from_distribution("napari-sam"))
    return npe2pm


@pytest.fixture
def layer() -> Labels:
    """A Labels layer as the annotator leaves it: classes in its features and its object records."""
    labels = synthetic_image((120, 150), seed=8).labels.astype(np.uint32)
    ids = [int(i) for i in np.unique(labels) if i]
    classes = ["nucleus" if i % 3 else "cell" for i in ids]
    records = {i: {"score": 0.9, "class": c, "plane": ""} for i, c in zip(ids, classes, strict=True)}
    return Labels(labels, name="SAM labels", features={"index": ids, "class": classes},
                  metadata={AnnotatorController.OBJECTS_METADATA: records})


def test_the_records_key_is_the_controllers():
    assert dataset_io.OBJECTS_METADATA == AnnotatorController.OBJECTS_METADATA


def test_a_json_path_writes_coco_that_pycocotools_reads(layer, tmp_path):
    from pycocotools.coco import COCO

    written = npe2.write(str(tmp_path / "cells.json"), [layer.as_layer_data_tuple()], plugin_name="napari-sam")
    assert written == [str(tmp_path / "cells.json")]
    api = COCO(written[0])
    names = {c["id"]: c["name"] for c in api.loadCats(api.getCatIds())}
    assert sorted(names.values()) == ["cell", "nucleus"]
    annotations = api.loadAnns(api.getAnnIds())
    ids = [int(i) for i in np.unique(layer.data) if i]
    assert len(annotations) == len(ids)
    for annotation in annotations:
        label_id = annotation["label_id"]
        np.testing.assert_array_equal(api.annToMask(annotation).astype(bool), layer.data == label_id)
        assert names[annotation["category_id"]] == ("nucleus" if label_id % 3 else "cell")


def plain_yolo_parse(text: str, width: int, height: int):
    """Ultralytics' documented line format, parsed without our reader: class, then normalised x y pairs."""
    result = []
    for line in text.splitlines():
        values = line.split()
        points = np.array(values[1:], dtype=float).reshape(-1, 2)
        assert len(points) >= 3 and 0 <= points.min() and points.max() <= 1
        rr, cc = draw.polygon(points[:, 1] * height - 0.5, points[:, 0] * width - 0.5, (height, width))
        mask = np.zeros((height, width), bool)
        mask[rr, cc] = True
        result.append((int(values[0]), mask))
    return result


def test_a_txt_path_writes_yolo_seg_and_data_yaml(layer, tmp_path):
    import yaml

    written = npe2.write(str(tmp_path / "cells.txt"), [layer.as_layer_data_tuple()], plugin_name="napari-sam")
    assert sorted(written) == sorted([str(tmp_path / "cells.txt"), str(tmp_path / "data.yaml")])
    names = yaml.safe_load((tmp_path / "data.yaml").read_text())["names"]
    assert names == {0: "cell", 1: "nucleus"}
    objects = plain_yolo_parse((tmp_path / "cells.txt").read_text(), 150, 120)
    ids = [int(i) for i in np.unique(layer.data) if i]
    assert len(objects) == len(ids)
    for label_id, (cls, mask) in zip(ids, objects, strict=True):
        truth = layer.data == label_id
        assert names[cls] == ("nucleus" if label_id % 3 else "cell")
        if truth.sum() >= 100:
            assert (mask & truth).sum() / (mask | truth).sum() >= 0.95
    # a second image of the same dataset keeps data.yaml; another class list is refused
    npe2.write(str(tmp_path / "more.txt"), [layer.as_layer_data_tuple()], plugin_name="napari-sam")
    other = Labels(layer.data, features={"index": [1], "class": ["dog"]})
    with pytest.raises(InputError, match="names the classes"):
        npe2.write(str(tmp_path / "dog.txt"), [other.as_layer_data_tuple()], plugin_name="napari-sam")
    assert not (tmp_path / "dog.txt").exists()


def test_a_3d_layer_is_refused_with_advice(tmp_path):
    stack = Labels(np.ones((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="2D labels"):
        npe2.write(str(tmp_path / "s.json"), [stack.as_layer_data_tuple()], plugin_name="napari-sam")


def test_coco_file_opens_as_labels_over_their_image(layer, tmp_path):
    image = np.random.default_rng(1).integers(0, 255, layer.data.shape, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", image)
    meta = layer.as_layer_data_tuple()[1]
    meta["metadata"][dataset_io.IMAGE_FILE_METADATA] = str(tmp_path / "cells.tif")
    npe2.write(str(tmp_path / "cells.json"), [(layer.data, meta, "labels")], plugin_name="napari-sam")
    layers = npe2.read([str(tmp_path / "cells.json")], stack=False, plugin_name="napari-sam")
    assert [(kind, kwargs["name"]) for _, kwargs, kind in layers] == [("image", "cells"), ("labels", "cells labels")]
    np.testing.assert_array_equal(layers[0][0], image)
    np.testing.assert_array_equal(layers[1][0], layer.data)
    opened = Labels(layers[1][0], **layers[1][1])
    assert dataset_io.layer_classes(opened.as_layer_data_tuple()[1]) == dataset_io.layer_classes(meta)


def test_yolo_folder_opens_as_labels_over_their_images(layer, tmp_path):
    from napari_sam.engine.export.yolo import save_data_yaml, save_yolo_txt

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "images" / "train" / "a.tif", np.zeros(layer.data.shape, np.uint8))
    classes = dataset_io.layer_classes(layer.as_layer_data_tuple()[1])
    save_yolo_txt(tmp_path / "labels" / "train" / "a.txt", layer.data, classes, ["cell", "nucleus"])
    save_data_yaml(tmp_path, ["cell", "nucleus"])
    assert dataset_io.get_yolo_reader(str(tmp_path / "images")) is None  # no data.yaml there
    layers = npe2.read([str(tmp_path)], stack=False, plugin_name="napari-sam")
    assert [kind for *_, kind in layers] == ["image", "labels"]
    labels, kwargs, _ = layers[1]
    assert kwargs["name"] == "a labels" and set(kwargs["features"]["class"]) == {"cell", "nucleus"}
    ids = [int(i) for i in np.unique(layer.data) if i]
    assert len(np.unique(labels)) - 1 == len(ids)
