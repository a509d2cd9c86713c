"""What the distribution declares matches what the code imports; the engine and CLI run without napari."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import napari_sam

PACKAGE_DIR = Path(napari_sam.__file__).parent
REPO = PACKAGE_DIR.parents[1]

# import name -> distribution name, where they differ
DISTRIBUTION_OF = {"skimage": "scikit-image", "PIL": "pillow", "yaml": "pyyaml"}
# imported only inside ``try: ... except ImportError`` with a fallback (progress bars)
OPTIONAL_IMPORTS = {"tqdm"}


def _third_party_imports(paths) -> set[str]:
    names = set()
    stdlib = set(sys.stdlib_module_names)
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            names.update(r for r in roots if r not in stdlib and r not in ("napari_sam", "__future__"))
    return names - OPTIONAL_IMPORTS


def _declared(extra: str | None) -> set[str]:
    """Distribution names required by the base install (extra None) or by one extra."""
    names = set()
    for requirement in importlib.metadata.requires("napari-sam") or []:
        spec, _, marker = requirement.partition(";")
        wanted = f'extra == "{extra}"' in marker if extra else not marker.strip()
        if wanted:
            names.add(re.split(r"[\[<>=!~ ]", spec.strip(), maxsplit=1)[0].lower())
    return names


def test_every_imported_distribution_is_declared():
    gui = set((PACKAGE_DIR / "_napari").rglob("*.py"))
    headless = [p for p in PACKAGE_DIR.rglob("*.py") if p not in gui]
    base = _declared(None)
    # imported only where a missing one is reported with install advice (dask runner, `annotate`, medical readers)
    optional = {"dask", "distributed", "napari", "nibabel", "pydicom"}
    missing = {DISTRIBUTION_OF.get(n, n).lower() for n in _third_party_imports(headless)} - base - optional
    assert not missing, f"imported by the engine/CLI but not in the base dependencies: {sorted(missing)}"
    assert {"dask", "distributed"} <= _declared("dask") and "napari" in _declared("napari")
    napari_extra = _declared("napari")
    missing = {DISTRIBUTION_OF.get(n, n).lower() for n in _third_party_imports(gui)} - base - napari_extra
    assert not missing, f"imported by the napari widgets but not in the napari extra: {sorted(missing)}"
    # the GUI stack stays out of the base install: Dask workers and servers need no napari
    assert not {"napari", "magicgui", "qtpy", "pyqt5", "pyqt6", "pyside2", "pyside6"} & base


def test_one_version_source_and_a_license():
    assert importlib.metadata.version("napari-sam") == napari_sam.__version__
    assert (REPO / "LICENSE").read_text().startswith("BSD 3-Clause License")
    assert importlib.metadata.metadata("napari-sam")["License-Expression"] == "BSD-3-Clause"


def test_cli_segments_without_napari_installed(trained_model_path, tmp_path):
    """A headless server or Dask worker: napari, magicgui and Qt cannot be imported at all."""
    import numpy as np
    import tifffile

    from napari_sam.engine.datasets.synthetic import synthetic_image

    tifffile.imwrite(tmp_path / "cells.tif", synthetic_image((160, 200), seed=3).image)
    trained = trained_model_path
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6"):
            sys.modules[name] = None  # import fails as if not installed
        from napari_sam.cli import main
        sys.exit(main(["segment", r"{tmp_path / 'cells.tif'}", "--model", r"{trained}",
                       "--out", r"{tmp_path / 'labels.tif'}", "--points-per-side", "8",
                       "--pred-iou-thresh", "0.5", "--no-progress"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == (160, 200) and labels.max() > 0
    assert np.unique(labels).size - 1 == labels.max()


def test_annotate_without_napari_says_how_to_install_it():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["napari"] = None  # import fails as if not installed
        from napari_sam.cli import main
        sys.exit(main(["annotate", "--no-load"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "pip install 'napari-sam[all]'" in result.stderr
    assert "Traceback" not in result.stderr
