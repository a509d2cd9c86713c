"""``napari-sam annotate-dataset IMAGES_DIR --boxes BOXES --model M --format F --out DIR``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main
from napari_sam.engine.datasets.synthetic import synthetic_image


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """Two synthetic images and their true boxes (CSV, one per image); run from the repository root."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parents[2])
    images, boxes = tmp_path / "images", tmp_path / "boxes"
    images.mkdir()
    boxes.mkdir()
    for k in range(2):
        sample = synthetic_image((96, 96), seed=60 + k)
        tifffile.imwrite(images / f"cells_{k}.tif", (np.clip(sample.image, 0, 1) * 255).astype(np.uint8))
        rows = ["x_min,y_min,x_max,y_max,class"]
        for label_id in range(1, sample.labels.max() + 1):
            r, c = np.nonzero(sample.labels == label_id)
            rows.append(f"{c.min()},{r.min()},{c.max() + 1},{r.max() + 1},{'nucleus' if label_id % 2 else 'cell'}")
        (boxes / f"cells_{k}.csv").write_text("\n".join(rows) + "\n")
    return images, boxes


def run(*args: str) -> int:
    return main(["annotate-dataset", *map(str, args)])


def test_yolo_dataset_with_progress_then_resume(trained_model_path, tmp_path, dataset, capsys):
    images, boxes = dataset
    out = tmp_path / "yolo"
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--format", "yolo", "--out", out,
               "--device", "cpu", "--precision", "fp32") == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err  # the progress bar
    assert "2 image(s) annotated" in captured.out and "classes cell, nucleus" in captured.out
    assert sorted(p.name for p in (out / "labels" / "train").iterdir()) == ["cells_0.txt", "cells_1.txt"]
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["cells_0.tif", "cells_1.tif"]
    assert "names:\n  0: cell\n  1: nucleus\n" in (out / "data.yaml").read_text()
    for line in (out / "labels" / "train" / "cells_0.txt").read_text().splitlines():
        fields = line.split()
        assert fields[0] in ("0", "1") and len(fields) >= 7 and len(fields) % 2 == 1
    # rerun: everything is done already, nothing annotated again
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--format", "yolo", "--out", out, "--no-progress") == 0
    assert "0 image(s) annotated, 2 done before" in capsys.readouterr().out


def test_an_existing_output_needs_overwrite(trained_model_path, tmp_path, dataset, capsys):
    images, boxes = dataset
    out = tmp_path / "out"
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--format", "tiff", "--out", out, "--no-progress",
               "--device", "cpu") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert sorted(before) == ["cells_0.csv", "cells_0.tif", "cells_1.csv", "cells_1.tif"]
    capsys.readouterr()
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--format", "coco", "--out", out, "--no-progress") == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-sam annotate-dataset: error: The output folder") and "--overwrite" in err
    assert "Traceback" not in err and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--format", "coco", "--out", out, "--no-progress",
               "--device", "cpu", "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [".napari-sam", "annotations.json"]


def test_bad_input_is_one_line(trained_model_path, tmp_path, dataset, capsys):
    images, boxes = dataset
    (boxes / "cells_1.csv").write_text("")
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--out", tmp_path / "o", "--no-progress") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cells_1.csv is empty" in err
    (boxes / "cells_1.csv").unlink()
    assert run(images, "--boxes", boxes, "--model", trained_model_path, "--out", tmp_path / "o", "--no-progress") == 1
    assert "no box file for 1 image(s): cells_1.tif" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run(images, "--boxes", boxes, "--model", trained_model_path, "--format", "voc", "--out", tmp_path / "o")
    assert exit_info.value.code == 2 and "invalid choice: 'voc'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

