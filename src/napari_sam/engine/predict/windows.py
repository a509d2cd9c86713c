"""Intensity windows: which values SAM sees as black and white, one choice for every plane.

A window is what a radiologist picks to read a CT: width W and level L show L - W/2 as black and
L + W/2 as white (values outside are clipped). For SAM a window is an ``intensity_range``
``(L - W/2, L + W/2)``: :func:`~napari_sam.engine.predict.preprocessing.to_uint8_rgb` scales every
plane with that one range, so one Hounsfield value gives one model input on every plane.

* :data:`CT_PRESETS`: the one table of CT presets (name -> (width, level), in HU).
* Percentile windows for MR and other modalities: ``"p0.5-99.5"`` (robust low/high percentiles of
  the whole volume, estimated once from a few planes).
* Custom windows: ``"400,40"`` (width, level), as in the CLI's ``--window``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError

# name: (width, level) in HU; label shown in menus. The one source of the presets.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),  # soft tissue
    "liver": (150.0, 60.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "mediastinum": (350.0, 50.0),
}
PRESET_TITLES: dict[str, str] = {
    "abdomen": "Abdomen / soft tissue",
    "liver": "Liver",
    "lung": "Lung",
    "bone": "Bone",
    "brain": "Brain",
    "mediastinum": "Mediastinum",
}
PRESET_ALIASES = {"soft_tissue": "abdomen", "soft-tissue": "abdomen", "softtissue": "abdomen"}
AUTO = "auto"  # no window: the engine's default robust percentiles (DEFAULT_PERCENTILES)
MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    """One intensity window: ``kind`` "ct" (``width``, ``level``) or "percentile" (``percentiles``).

    ``name`` is the preset's name, "custom", or "auto".
    """

    name: str
    kind: str
    width: float = 0.0
    level: float = 0.0
    percentiles: tuple[float, float] = MR_PERCENTILES

    def describe(self) -> str:
        """How a radiologist reads it: 'Liver (W 150, L 60 HU: -15 to 135)' or 'percentiles 0.5-99.5'."""
        if self.kind == "percentile":
            lo, hi = self.percentiles
            prefix = "Automatic: " if self.name == AUTO else ""
            return f"{prefix}percentiles {lo:g}-{hi:g} of the volume"
        title = PRESET_TITLES.get(self.name, "Custom")
        lo, hi = self.level - self.width / 2, self.level + self.width / 2
        return f"{title} (W {self.width:g}, L {self.level:g}: {lo:g} to {hi:g})"

    def spec(self) -> str:
        """The text :func:`parse_window` reads back to this window (CLI form)."""
        if self.name in CT_PRESETS or self.name == AUTO:
            return self.name
        if self.kind == "percentile":
            return f"p{self.percentiles[0]:g}-{self.percentiles[1]:g}"
        return f"{self.width:g},{self.level:g}"


def ct_window(width: float, level: float, name: str = "custom") -> Window:
    """A CT window of ``width`` and ``level`` (HU), checked.

    Parameters
    ----------
    width
        Window width, > 0.
    level
        Window centre.
    name
        The preset name, or "custom".

    Returns
    -------
    Window
        ``kind`` "ct".

    Raises
    ------
    InputError
        ``width`` is not a positive finite number, or ``level`` is not finite.
    """
    width, level = float(width), float(level)
    if not np.isfinite(level) or not np.isfinite(width) or width <= 0:
        raise InputError(
            f"A window needs a width > 0 and a finite level, got width {width:g}, level {level:g}: "
            "e.g. 400,40 for soft tissue (width first, then level, in HU)."
        )
    return Window(name, "ct", width, level)


def percentile_window(low: float, high: float) -> Window:
    """A window between the ``low`` and ``high`` percentiles of the volume (MR, PET, anything uncalibrated).

    Parameters
    ----------
    low, high
        Percentiles in 0-100, ``low < high``.

    Returns
    -------
    Window
        ``kind`` "percentile".

    Raises
    ------
    InputError
        Not ``0 <= low < high <= 100``.
    """
    if not (0.0 <= low < high <= 100.0):
        raise InputError(f"Percentiles must satisfy 0 <= low < high <= 100, got {low:g} and {high:g}.")
    name = AUTO if (low, high) == MR_PERCENTILES else "percentile"
    return Window(name, "percentile", percentiles=(float(low), float(high)))


def parse_window(text: str) -> Window:
    """A window from its CLI text: a preset name, ``W,L``, ``pLOW-HIGH``, ``mr`` or ``auto``.

    Parameters
    ----------
    text
        ``abdomen`` (any preset of :data:`CT_PRESETS`, case-insensitive), ``400,40`` (width, level
        in HU), ``p1-99`` (percentiles), ``mr`` (percentiles 0.5-99.5) or ``auto``.

    Returns
    -------
    Window
        The window.

    Raises
    ------
    InputError
        Unknown text (the message lists the presets), or a width <= 0.
    """
    key = str(text).strip().lower()
    key = PRESET_ALIASES.get(key, key)
    if key in CT_PRESETS:
        return ct_window(*CT_PRESETS[key], name=key)
    if key in (AUTO, "mr", "percentile"):
        return percentile_window(*MR_PERCENTILES)
    numbers = None
    try:
        if key.startswith("p") and "-" in key[1:]:
            numbers = ("percentile", *(float(v) for v in key[1:].split("-", 1)))
        elif "," in key:
            numbers = ("ct", *(float(v) for v in key.split(",", 1)))
    except ValueError:
        numbers = None
    if numbers is not None:
        kind, first, second = numbers
        return percentile_window(first, second) if kind == "percentile" else ct_window(first, second)
    presets = ", ".join(f"{name} ({w:g},{lvl:g})" for name, (w, lvl) in CT_PRESETS.items())
    raise InputError(
        f"Unknown window {text!r}. Use a CT preset: {presets}; a custom 'width,level' in HU such as 400,40; "
        "'p1-99' for percentiles; or 'mr'/'auto' for percentiles 0.5-99.5."
    )


def window_range(window: Window, volume: Any = None) -> tuple[float, float]:
    """The ``intensity_range`` (low, high) that ``window`` gives ``volume``: one range for all its planes.

    Parameters
    ----------
    window
        A CT or percentile window.
    volume
        The image or volume (any array-like; a few planes are sampled); needed for percentile
        windows only.

    Returns
    -------
    low, high : float
        ``level -+ width / 2`` for a CT window; the volume's percentiles otherwise.

    Raises
    ------
    InputError
        A percentile window without a volume, or a constant volume (no range to show).
    """
    if window.kind == "ct":
        return window.level - window.width / 2, window.level + window.width / 2
    if volume is None:
        raise InputError("A percentile window needs the image to measure its percentiles.")
    from napari_sam.engine.predict.preprocessing import intensity_range

    lo, hi = (float(v) for v in intensity_range(volume, window.percentiles))
    if not hi > lo:
        raise InputError(f"The image is constant ({lo:g}) between percentiles {window.percentiles}; nothing to window.")
    return lo, hi


class WindowedVolume:
    """``volume`` scaled through a window to uint8, computed lazily for each region read.

    The arithmetic is :func:`~napari_sam.engine.predict.preprocessing.to_uint8_rgb`'s with the
    window as its ``intensity_range`` (float64, clipped, rounded), so code that takes uint8 images
    as they are (the tiled automatic segmentation) sees exactly what the annotator's predictor sees.

    Parameters
    ----------
    volume
        Any array-like (numpy, dask, zarr): (H, W), (Z, H, W), ... single channel.
    intensity_range
        (low, high), e.g. from :func:`window_range`.
    """

    def __init__(self, volume: Any, intensity_range: tuple[float, float]):
        lo, hi = (float(v) for v in intensity_range)
        if not hi > lo:
            raise InputError(f"A window needs high > low, got {lo:g} and {hi:g}.")
        from napari_sam.engine.io.safe_write import array_source_path

        self.volume, self.low, self.high = volume, lo, hi
        self.source_path = array_source_path(volume)  # an output is still checked against the file read
        self.shape = tuple(volume.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        values = np.asarray(self.volume[key], dtype=np.float64)
        values -= self.low
        values *= 255.0 / (self.high - self.low)
        np.clip(values, 0, 255, out=values)
        return np.rint(values).astype(np.uint8)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)
