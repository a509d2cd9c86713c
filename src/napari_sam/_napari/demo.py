"""Open napari with a sample image and the Segment Anything annotator docked.

    python -m napari_sam._napari.demo                 # scikit-image 'cell', MobileSAM (vit_t)
    python -m napari_sam._napari.demo --sample nuclei_stack --model vit_b
    python -m napari_sam._napari.demo --model /path/to/sam_vit_b_01ec64.pth

The model is loaded (and downloaded into the cache on first use) when the window
is up; ``--no-load`` leaves that to the "Load model" button.
"""

from __future__ import annotations

SAMPLES = ("cell", "coins", "nuclei_stack")
PLUGIN = "napari-sam"
WIDGET = "Segment Anything annotator"


def open_annotator(viewer, sample: str | None = "cell", model: str | None = "vit_t", load: bool = True):
    """Add ``sample`` to ``viewer``, dock the annotator and start loading ``model``; returns the widget."""
    if sample:
        viewer.open_sample(PLUGIN, sample)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if model:
        widget.model_picker.choose(model)
        if load:
            widget.load_model()
    return widget


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_sam._napari.demo [options]``: the same as ``napari-sam annotate [options]``."""
    import sys

    from napari_sam.cli import main as cli_main

    return cli_main(["annotate", *(sys.argv[1:] if argv is None else argv)])


def launch(sample: str | None = "cell", model: str | None = "vit_t", load: bool = True) -> None:
    """Open a napari window with the annotator (see :func:`open_annotator`) and run the event loop."""
    import napari

    viewer = napari.Viewer(title="napari-sam")
    open_annotator(viewer, sample, model, load=load)
    napari.run()


if __name__ == "__main__":
    raise SystemExit(main())
