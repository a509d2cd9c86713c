"""Segment Anything in napari.

Importing this package is cheap: torch and the heavy modules are imported lazily
by the functions that need them, so napari starts fast and npe2 can read the
manifest without importing torch.
"""

__version__ = "0.1.0"
