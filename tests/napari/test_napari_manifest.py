"""The npe2 manifest: valid, every python_name importable, the right menus, categories and samples."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest

import napari_sam

MANIFEST = Path(napari_sam.__file__).parent / "napari.yaml"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_file(MANIFEST)


def test_npe2_validate_passes():
    npe2 = shutil.which("npe2") or [sys.executable, "-m", "npe2"]
    command = [npe2, "validate", "napari-sam"] if isinstance(npe2, str) else [*npe2, "validate", "napari-sam"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_the_installed_entry_point_is_this_manifest(manifest):
    installed = PluginManifest.from_distribution("napari-sam")
    assert installed.name == manifest.name == "napari-sam"
    assert {c.id for c in installed.contributions.commands} == {c.id for c in manifest.contributions.commands}


def test_every_python_name_imports(manifest):
    names = [command.python_name for command in manifest.contributions.commands if command.python_name]
    assert names, "the manifest names no python callables"
    for name in names:
        module_name, _, attribute = name.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        assert callable(target), name


def test_every_widget_sample_and_menu_points_at_a_command(manifest):
    contributions = manifest.contributions
    command_ids = {command.id for command in contributions.commands}
    assert all(command_id.startswith("napari-sam.") for command_id in command_ids)
    referenced = [w.command for w in contributions.widgets] + [s.command for s in contributions.sample_data]
    referenced += [item.command for items in contributions.menus.values() for item in items]
    assert set(referenced) <= command_ids
    assert set(manifest.categories) == {"Segmentation", "Annotation"}


def test_annotator_is_in_layers_segment_menu(manifest):
    from napari._app_model.constants._menus import is_menu_contributable

    items = manifest.contributions.menus["napari/layers/segment"]
    assert is_menu_contributable("napari/layers/segment")
    assert "napari-sam.annotator" in [item.command for item in items]
    assert "napari-sam.annotator" in [widget.command for widget in manifest.contributions.widgets]


@pytest.mark.parametrize("key", ["cell", "coins", "nuclei_stack"])
def test_sample_data(manifest, key):
    sample = next(s for s in manifest.contributions.sample_data if s.key == key)
    command = next(c for c in manifest.contributions.commands if c.id == sample.command)
    module_name, _, attribute = command.python_name.partition(":")
    layers = getattr(importlib.import_module(module_name), attribute)()
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image" and kwargs["name"]
    assert data.ndim == (3 if key == "nuclei_stack" else 2)
    assert np.ptp(data) > 0
