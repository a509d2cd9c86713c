"""``napari-sam annotate``: napari with the annotator docked."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``annotate`` subcommand to the ``napari-sam`` parser's ``subparsers``.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers`` returned; the new parser's ``run`` default is :func:`run`.
    """
    from napari_sam._napari.demo import SAMPLES

    p = subparsers.add_parser(
        "annotate",
        help="open napari with the Segment Anything annotator docked",
        description="Open napari with the interactive annotator docked, optionally on a sample image.",
    )
    p.add_argument("--sample", choices=(*SAMPLES, "none"), default="cell", help="sample image to open (default: cell)")
    p.add_argument("--model", default="vit_t", help="zoo name or checkpoint file (default: vit_t, MobileSAM)")
    p.add_argument("--no-load", action="store_true", help="do not load the model at start")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Open napari with the annotator docked and return when its window is closed.

    Parameters
    ----------
    args
        The parsed options: ``sample`` (a sample name or ``"none"``), ``model``, ``no_load``.

    Returns
    -------
    int
        0, the exit status.

    Raises
    ------
    InputError
        napari is not installed (a headless install); the message says how to install it.
    """
    from napari_sam.engine.errors import InputError

    try:
        import napari  # noqa: F401
    except ImportError:
        # a headless install (the base package): the engine and `segment` work, the GUI does not
        raise InputError(
            "napari is not installed in this environment; install it with "
            "pip install 'napari-sam[all]' (napari with a Qt binding) and run this command again."
        ) from None
    from napari_sam._napari.demo import launch

    launch(None if args.sample == "none" else args.sample, args.model, load=not args.no_load)
    return 0
