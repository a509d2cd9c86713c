"""Importing the package (and reading its manifest) must not import torch, napari or Qt."""

import subprocess
import sys


def test_import_napari_sam_does_not_import_torch():
    code = (
        "import sys, napari_sam, napari_sam.engine, napari_sam.model\n"
        "from napari_sam.model import load_model, build_sam\n"
        "heavy = [m for m in ('torch', 'napari', 'qtpy') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
