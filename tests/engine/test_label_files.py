"""Saving labels as TIFF + CSV (engine/io/label_files.py): reads back equal, never overwrites unasked."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import tifffile

from napari_sam.engine.errors import InputError
from napari_sam.engine.io import label_files
from napari_sam.engine.io.safe_write import TEMPORARY_MARK


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tiff_and_csv_read_back(tmp_path):
    labels = np.zeros((2, 6, 7), np.uint32)
    labels[0, 1:3, 1:3] = 1
    labels[1, 4:, 5:] = 70_000  # beyond uint16: written as uint32
    table = {"index": [1, 70_000], "area": [4, 4], "score": [0.9, float("nan")], "class": ["", ""]}
    written = label_files.save_labels(tmp_path / "cells.tif", labels, table)
    assert written == [tmp_path / "cells.tif", tmp_path / "cells.csv"]
    back = tifffile.imread(tmp_path / "cells.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, labels)
    rows = read_csv(tmp_path / "cells.csv")
    assert [row["index"] for row in rows] == ["1", "70000"] and rows[0]["score"] == "0.9"
    small = label_files.save_labels(tmp_path / "small.tiff", labels[:1].astype(np.int64))
    assert small == [tmp_path / "small.tiff"] and tifffile.imread(small[0]).dtype == np.uint16
    assert not [p for p in os.listdir(tmp_path) if TEMPORARY_MARK in p]


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    target = tmp_path / "cells.tif"
    target.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exist"):
        label_files.save_labels(target, np.ones((3, 3), np.uint8), {"index": [1]})
    assert target.read_bytes() == b"precious" and not (tmp_path / "cells.csv").exists()
    assert label_files.existing_outputs(target) == [target]
    label_files.save_labels(target, np.ones((3, 3), np.uint8), {"index": [1]}, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(target), np.ones((3, 3)))


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=".tif"):
        label_files.save_labels(tmp_path / "cells.png", np.ones((3, 3), np.uint8))
    with pytest.raises(InputError, match="does not exist"):
        label_files.save_labels(tmp_path / "missing" / "cells.tif", np.ones((3, 3), np.uint8))
    with pytest.raises(InputError, match="negative"):
        label_files.save_labels(tmp_path / "cells.tif", -np.ones((3, 3), np.int32))
    assert os.listdir(tmp_path) == []
