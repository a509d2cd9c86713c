"""``python -m napari_sam.cli``: the same as the ``napari-sam`` command."""

import sys

from napari_sam.cli import main

sys.exit(main())
