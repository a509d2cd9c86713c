"""Patient geometry of medical volumes: from a file's voxel order to napari's (z, y, x) and back.

The decision (see docs/medical.md):

* A scan becomes an array in **(z, y, x) order, axis-aligned with the patient's LPS frame**:
  ``x`` increases towards the patient's Left, ``y`` towards Posterior, ``z`` towards Superior
  (DICOM's and ITK's frame). Row 0 of an axial plane is then anterior and column 0 the patient's
  right, as radiologists view it. Axis permutations and flips of the source are resolved here,
  exactly and without resampling: the array is a transposed, reversed view of the file's voxels.
* napari's world coordinates are LPS millimetres listed in (S, P, L) order: ``scale`` is the voxel
  spacing (z, y, x) and ``translate`` the position of voxel (0, 0, 0). A residual oblique rotation
  (direction cosines not along the axes) is not applied on screen; its angle is recorded and
  warned about, and files written back still carry the exact source affine.
* What it takes to write a result back in the source's own geometry (the source affine and voxel
  order, the permutation and flips) is a plain JSON-friendly dict kept in ``layer.metadata``
  under :data:`GEOMETRY_KEY`; see :class:`VolumeGeometry`.

Affines here are 4x4 float64; "voxel" indices are the source file's, "array" indices the (z, y, x)
array's.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.engine.errors import InputError

GEOMETRY_KEY = "napari_sam_geometry"
"""``layer.metadata`` key of a medical volume's geometry record (:meth:`VolumeGeometry.to_record`)."""
ARRAY_AXES = ("z", "y", "x")
WORLD_AXES = ("S", "P", "L")  # napari world axis i is the LPS coordinate of array axis i
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
OBLIQUE_TOLERANCE_DEGREES = 0.5  # below this a rotation is rounding noise of the file's header


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a (z, y, x) array lies in the patient, and how it came from the source's voxels.

    ``order[a]`` is the source voxel axis shown as array axis ``a``; ``flip[a]`` says whether it
    runs backwards. ``source_affine`` maps source voxel indices to the source's own frame
    (``source_frame``: "RAS" for NIfTI, "LPS" for DICOM); ``source_shape`` is the source voxel shape.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    source_affine: np.ndarray
    source_frame: str
    source_shape: tuple[int, int, int]
    source_format: str
    extra: dict = field(default_factory=dict)

    # --------------------------------------------------------------- derived
    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the (z, y, x) array."""
        return tuple(self.source_shape[axis] for axis in self.order)

    @property
    def voxel_to_lps(self) -> np.ndarray:
        """4x4: source voxel index -> LPS millimetres."""
        return self.source_affine if self.source_frame == "LPS" else RAS_TO_LPS @ self.source_affine

    @property
    def array_to_source(self) -> np.ndarray:
        """4x4: (z, y, x) array index -> source voxel index (a permutation with flips)."""
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        for a, (s, reversed_) in enumerate(zip(self.order, self.flip)):
            m[s, a] = -1.0 if reversed_ else 1.0
            m[s, 3] = self.source_shape[s] - 1 if reversed_ else 0.0
        return m

    @property
    def array_to_world(self) -> np.ndarray:
        """4x4: (z, y, x) array index -> napari world (S, P, L) millimetres (LPS reversed)."""
        reverse = np.eye(4)[[2, 1, 0, 3]]
        return reverse @ self.voxel_to_lps @ self.array_to_source

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (z, y, x), millimetres: napari's ``scale``."""
        return tuple(float(v) for v in np.linalg.norm(self.array_to_world[:3, :3], axis=0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """World (S, P, L) position of array voxel (0, 0, 0), millimetres: napari's ``translate``."""
        return tuple(float(v) for v in self.array_to_world[:3, 3])

    @property
    def oblique_degrees(self) -> float:
        """Angle of the residual rotation between the array's axes and the patient's (0 = axis-aligned)."""
        rotation = self.array_to_world[:3, :3] / np.asarray(self.spacing)
        cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
        return float(np.degrees(np.arccos(cos)))

    def layer_kwargs(self) -> dict:
        """``scale``, ``translate`` and ``metadata`` for a napari layer over the (z, y, x) array."""
        return {"scale": self.spacing, "translate": self.origin, "metadata": {GEOMETRY_KEY: self.to_record()}}

    # --------------------------------------------------------------- arrays
    def to_array(self, voxels: np.ndarray) -> np.ndarray:
        """The source-ordered ``voxels`` as the (z, y, x) array (a view: transposed, reversed).

        Parameters
        ----------
        voxels
            Shape ``source_shape``.

        Returns
        -------
        np.ndarray
            Shape :attr:`shape`.
        """
        view = np.transpose(voxels, self.order)
        return view[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_array`: a (z, y, x) array in the source's voxel order.

        Parameters
        ----------
        array
            Shape :attr:`shape`, e.g. labels drawn over the scan.

        Returns
        -------
        np.ndarray
            Shape ``source_shape``, C-contiguous.

        Raises
        ------
        InputError
            ``array`` does not have the scan's shape.
        """
        if tuple(array.shape) != self.shape:
            raise InputError(
                f"The labels have shape {tuple(array.shape)} but the scan they belong to has shape {self.shape} "
                "(z, y, x): they cannot be saved in its geometry."
            )
        flipped = np.asarray(array)[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]
        return np.ascontiguousarray(np.transpose(flipped, np.argsort(self.order)))

    # --------------------------------------------------------------- records
    def to_record(self) -> dict:
        """A JSON-friendly dict holding everything (read back with :meth:`from_record`)."""
        return {
            "format": self.source_format,
            "order": list(self.order),
            "flip": list(self.flip),
            "source_affine": np.asarray(self.source_affine, dtype=float).tolist(),
            "source_frame": self.source_frame,
            "source_shape": list(self.source_shape),
            "array_axes": "z, y, x = superior, posterior, left (LPS)",
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "oblique_degrees": self.oblique_degrees,
            **self.extra,
        }

    @classmethod
    def from_record(cls, record: dict) -> VolumeGeometry:
        """The geometry :meth:`to_record` wrote.

        Parameters
        ----------
        record
            The dict, as found in ``layer.metadata[GEOMETRY_KEY]``.

        Returns
        -------
        VolumeGeometry
            Equal to the one that wrote it.

        Raises
        ------
        InputError
            The record lacks a field or holds a malformed affine.
        """
        known = {"order", "flip", "source_affine", "source_frame", "source_shape", "format"}
        try:
            affine = np.asarray(record["source_affine"], dtype=float)
            if affine.shape != (4, 4):
                raise ValueError(f"affine of shape {affine.shape}")
            return cls(
                order=tuple(int(v) for v in record["order"]),
                flip=tuple(bool(v) for v in record["flip"]),
                source_affine=affine,
                source_frame=str(record["source_frame"]),
                source_shape=tuple(int(v) for v in record["source_shape"]),
                source_format=str(record["format"]),
                extra={k: v for k, v in record.items() if k not in known and k not in _DERIVED},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"The layer's geometry record ({GEOMETRY_KEY}) is damaged: {error}.") from None


_DERIVED = {"array_axes", "spacing", "origin", "oblique_degrees"}


@dataclass
class MedicalVolume:
    """A scan as napari shows it: ``data`` (z, y, x) in physical units and its :class:`VolumeGeometry`."""

    data: np.ndarray
    geometry: VolumeGeometry

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in millimetres."""
        return self.geometry.spacing


def orient_to_lps(voxel_to_lps: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """The (order, flip) that shows source voxels as a (z, y, x) array closest to LPS.

    Each array axis takes the source axis whose direction is nearest its patient axis (the
    permutation maximising the summed |cosines|), reversed when it points the other way.

    Parameters
    ----------
    voxel_to_lps
        4x4 affine from source voxel index to LPS millimetres.

    Returns
    -------
    order, flip
        As in :class:`VolumeGeometry`.

    Raises
    ------
    InputError
        The affine is singular (a zero voxel size or collinear axes).
    """
    matrix = np.asarray(voxel_to_lps, dtype=float)[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(norms == 0) or abs(np.linalg.det(matrix)) < 1e-12 * np.prod(norms):
        raise InputError(f"The scan's affine is singular (voxel axes {matrix.tolist()}); the file's header is damaged.")
    cosines = matrix / norms  # cosines[w, s]: source axis s along LPS axis w
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(cosines[w, p[w]]) for w in range(3)))
    # array axis a shows LPS axis w = 2 - a (z, y, x)
    order = tuple(best[2 - a] for a in range(3))
    flip = tuple(bool(cosines[2 - a, order[a]] < 0) for a in range(3))
    return order, flip


def make_geometry(
    voxel_affine: np.ndarray, frame: str, source_shape: tuple[int, ...], source_format: str, **extra: Any
) -> VolumeGeometry:
    """The :class:`VolumeGeometry` of a source volume, warning when it is oblique.

    Parameters
    ----------
    voxel_affine
        4x4 affine from source voxel index to ``frame`` millimetres.
    frame
        "RAS" (NIfTI) or "LPS" (DICOM).
    source_shape
        The source's 3 voxel dimensions.
    source_format
        "nifti" or "dicom" (recorded).
    **extra
        JSON-friendly facts kept in the record (modality, file, series...).

    Returns
    -------
    VolumeGeometry
        Its (z, y, x) orientation resolved.
    """
    affine = np.asarray(voxel_affine, dtype=float)
    to_lps = affine if frame == "LPS" else RAS_TO_LPS @ affine
    order, flip = orient_to_lps(to_lps)
    geometry = VolumeGeometry(order, flip, affine, frame, tuple(int(s) for s in source_shape), source_format, extra)
    angle = geometry.oblique_degrees
    if angle > OBLIQUE_TOLERANCE_DEGREES:
        warnings.warn(
            f"The scan is oblique: its axes are rotated {angle:.1f} degrees from the patient's. It is shown "
            "axis-aligned (distances along its axes are right; positions in the patient are approximate); files "
            "written back keep the exact original geometry.",
            UserWarning,
            stacklevel=3,
        )
    return geometry


def array_geometry(scale: Any, translate: Any, shape: tuple[int, ...]) -> VolumeGeometry:
    """The geometry of a (z, y, x) array with only napari's ``scale`` and ``translate`` to go by.

    Used for a layer without a geometry record: the array is taken to be LPS-aligned, and the
    source voxel order is (x, y, z) as in NIfTI.

    Parameters
    ----------
    scale, translate
        The layer's (z, y, x) spacing and origin (world S, P, L), 3 values each.
    shape
        The (z, y, x) array shape.

    Returns
    -------
    VolumeGeometry
        ``source_format`` "array", ``source_frame`` "RAS".
    """
    scale, translate = np.asarray(scale, dtype=float)[-3:], np.asarray(translate, dtype=float)[-3:]
    lps = np.eye(4)
    lps[:3, :3] = np.diag(scale[::-1])  # voxel (x, y, z) along L, P, S
    lps[:3, 3] = translate[::-1]
    return VolumeGeometry((2, 1, 0), (False,) * 3, RAS_TO_LPS @ lps, "RAS", tuple(shape[::-1]), "array")


def rescaled(raw: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """``raw * slope + intercept`` (DICOM rescale / NIfTI scl) in the smallest dtype that holds it exactly.

    Integers with integral slope and intercept (CT's 1 and -1024) stay integers: int16 when the
    result fits, else int32; anything else becomes float32 (float64 data stays float64).

    Parameters
    ----------
    raw
        The stored values.
    slope, intercept
        The rescale; None, NaN or (slope 0) mean "not set" (1 and 0).

    Returns
    -------
    np.ndarray
        The values in physical units (Hounsfield units for CT); ``raw`` itself when there is no rescale.
    """
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    intercept = 0.0 if intercept is None or not np.isfinite(intercept) else float(intercept)
    raw = np.asarray(raw)
    if slope == 1.0 and intercept == 0.0:
        return raw
    if raw.dtype.kind in "iub" and slope.is_integer() and intercept.is_integer() and raw.size:
        ends = np.array([raw.min(), raw.max()], dtype=np.float64) * slope + intercept
        product = float(max(abs(float(raw.min())), abs(float(raw.max())))) * abs(slope)
        work = np.int32 if product < 2**31 - abs(intercept) - 1 else np.int64  # no overflow on the way
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= ends.min() and ends.max() <= info.max:
                return (raw.astype(work) * work(slope) + work(intercept)).astype(dtype)
    out_dtype = np.float64 if raw.dtype == np.float64 else np.float32
    return (raw.astype(np.float64) * slope + intercept).astype(out_dtype)
