"""The ``napari-sam`` command line: headless access to the engine.

Each subcommand is a module of this package with ``add_parser(subparsers)`` and
``run(args)``. Heavy modules
(torch, the engine) are imported inside those functions, so ``napari-sam --help``
is instant.

    napari-sam finetune --images imgs/ --labels labels/ --output model.pt --model vit_b
    napari-sam segment slide.zarr --model vit_b --out labels.zarr
"""

from __future__ import annotations

import argparse
import sys

from napari_sam.cli import annotate, annotate_dataset, finetune, segment
from napari_sam.cli.errors import UsageError

# one module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``
SUBCOMMANDS = (segment, finetune, annotate, annotate_dataset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam", description="Segment Anything in napari and on the command line.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 bad input, 2 usage error, 130 interrupted).

    Expected failures (bad input, unusable or missing checkpoints, failed downloads, a device
    that is not there) print one line, ``napari-sam COMMAND: error: ...``, and no traceback.

    Parameters
    ----------
    argv
        The arguments after the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: the subcommand's (0 when done, 130 when interrupted), 1 after an
        expected failure, 2 when no subcommand was given (the help is printed).

    Raises
    ------
    SystemExit
        From argparse: status 2 for a usage error (bad options, or a subcommand's
        ``UsageError``), 0 after ``--help``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UsageError as error:
        parser.error(str(error))  # exits with status 2
    except Exception as error:
        if not isinstance(error, _expected_errors()):
            raise
        print(f"napari-sam {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input or environment, not a bug: reported in one line."""
    from napari_sam.engine.errors import InputError
    from napari_sam.model.errors import CheckpointError, DeviceError, DownloadError

    return InputError, CheckpointError, DownloadError, DeviceError
