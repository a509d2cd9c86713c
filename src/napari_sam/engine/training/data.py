"""Training data for fine-tuning: image + instance-label pairs, from folders or arrays.

A pair is an image ``(H, W)`` or ``(H, W, C)`` (C <= 4, any dtype the Predictor
takes) and an integer instance label image ``(H, W)`` (0 background, 1..N objects),
both in napari's pixel frame. ``prepare_sample`` turns a pair into exactly what the
``Predictor`` feeds the model at inference (``to_uint8_rgb`` then
``image_to_model_input``) plus the labels moved into SAM's input frame.

Two kinds of label images are repaired rather than refused, each said out loud:
a binary mask (one value, several separate regions) gets a warning and its
connected regions become the objects; ids larger than the image has pixels (e.g.
near 1e9) are renumbered 1..N in their order, so no step allocates per possible id.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from napari_sam.engine.errors import InputError
from napari_sam.engine.io.images import IMAGE_SUFFIXES, LABEL_SUFFIXES, read_image_file
from napari_sam.engine.training.prompt_sampling import (
    object_ids,
    validate_instance_labels,
)

if TYPE_CHECKING:
    import torch

    from napari_sam.model.config import SamConfig

# label files may be named like their image or with one of these endings before the extension
LABEL_NAME_ENDINGS = ("", "_labels", "_label", "_masks", "_mask", "_seg")


class TrainingPair(NamedTuple):
    """One image and its instance labels (pixel frame), with a name for error messages."""

    image: np.ndarray
    labels: np.ndarray
    name: str = "image"


def _relabel_sequentially(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..N in their order (0 stays background), without one counter per possible id."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64)
    return inverse if ids[0] == 0 else inverse + 1


def _split_binary_mask(labels: np.ndarray, name: str) -> np.ndarray:
    """A binary mask (a single foreground value, several separate regions) -> one object per region, with a warning.

    Instance labels give every object its own id. One value in several separate
    regions is a semantic (binary) mask: training on it as one object would teach
    SAM to segment all of them from one click. Touching objects stay merged, hence
    the advice to label instances.
    """
    from skimage.measure import label as connected_components

    foreground = labels[labels != 0]
    if foreground.size == 0 or (foreground != foreground[0]).any():
        return labels
    regions, count = connected_components(labels != 0, connectivity=1, return_num=True)
    if count < 2:
        return labels
    warnings.warn(
        f"The labels of {name} look like a binary mask: one value ({foreground[0]}) in {count} separate regions. "
        f"Each region is used as one object; touching objects stay merged. Label each object with its own id "
        f"(instance labels) for better training.",
        UserWarning,
        stacklevel=3,
    )
    return regions.astype(np.int64)


def validate_pair(
    image: ArrayLike, labels: ArrayLike, name: str = "image", require_objects: bool = True
) -> TrainingPair:
    """Check one image/label pair; returns it as numpy arrays with int64 labels.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, C)`` (C <= 4), pixel frame, any real dtype.
    labels
        ``(H, W)`` integer instance labels (0 background). A binary mask with several
        separate regions is split into one object per region (with a warning); ids
        larger than the image's pixel count are renumbered 1..N.
    name
        Names the pair in error messages.
    require_objects
        Refuse labels without any object.

    Returns
    -------
    TrainingPair
        The image and the (possibly renumbered) int64 labels.

    Raises
    ------
    InputError
        Mismatched shapes, non-integer labels, images that are not 2D (optionally with
        up to 4 channels last), and (``require_objects``) labels without objects.
    """
    image = np.asarray(image)
    labels = validate_instance_labels(labels, name=f"labels of {name}")
    if labels.ndim != 2:
        raise InputError(f"labels of {name} must be 2D (H, W); got shape {labels.shape}.")
    if image.ndim == 3 and image.shape[2] > 4:
        raise InputError(
            f"{name} has shape {image.shape}: expected (H, W) or (H, W, C) with C <= 4 channels last."
        )
    if image.ndim not in (2, 3) or image.shape[:2] != labels.shape:
        raise InputError(
            f"{name} has shape {image.shape} but its labels have shape {labels.shape}: an image and its "
            "labels must cover the same pixels ((H, W) or (H, W, C) image with (H, W) labels)."
        )
    if image.dtype.kind not in "biuf":
        raise InputError(f"{name} has unsupported dtype {image.dtype}.")
    if require_objects and not labels.any():
        raise InputError(f"The labels of {name} contain no objects (all 0); annotate at least one object.")
    if labels.size and labels.max() > labels.size:
        labels = _relabel_sequentially(labels)
    return TrainingPair(image, _split_binary_mask(labels, name), name)


def pairs_from_arrays(
    images: ArrayLike | Sequence[ArrayLike], labels: ArrayLike | Sequence[ArrayLike], name: str = "layer"
) -> list[TrainingPair]:
    """Training pairs from in-memory arrays, e.g. napari layers' data.

    Accepts one 2D image (``(H, W)`` or ``(H, W, C)``) with ``(H, W)`` labels, a stack
    ``(Z, H, W)`` (or ``(Z, H, W, C)``) with ``(Z, H, W)`` labels (every annotated slice
    becomes a pair; slices without objects are skipped), or lists of either.

    Parameters
    ----------
    images
        An image, a stack, or a list or tuple of them.
    labels
        Their instance labels, in the same form (both lists, or both arrays).
    name
        Names the data in error messages; list items become ``name[i]``, slices
        ``name slice z``.

    Returns
    -------
    list of TrainingPair
        One validated pair per 2D image or annotated slice, in order.

    Raises
    ------
    InputError
        Lists and arrays mixed, lists of different lengths or empty, shapes that do
        not match, labels that are not 2D or 3D, a 2D pair without objects, a stack
        without an annotated slice, or a pair that is not valid (see :func:`validate_pair`).
    """
    if isinstance(images, (list, tuple)) or isinstance(labels, (list, tuple)):
        if not isinstance(images, (list, tuple)) or not isinstance(labels, (list, tuple)):
            raise InputError("Pass images and labels both as lists, or both as arrays.")
        if len(images) != len(labels):
            raise InputError(f"Got {len(images)} images but {len(labels)} label images.")
        if not images:
            raise InputError("No training images were given.")
        pairs = []
        for index, (image, label) in enumerate(zip(images, labels)):
            pairs.extend(pairs_from_arrays(image, label, name=f"{name}[{index}]"))
        return pairs
    image = np.asarray(images)
    label = np.asarray(labels)
    if label.ndim == 2:
        return [validate_pair(image, label, name)]
    if label.ndim == 3:
        if image.shape[: label.ndim] != label.shape:
            raise InputError(
                f"{name}: image stack of shape {image.shape} does not match labels of shape {label.shape}."
            )
        validate_instance_labels(label, name=f"labels of {name}")
        pairs = [
            validate_pair(image[z], label[z], f"{name} slice {z}")
            for z in range(label.shape[0])
            if label[z].any()
        ]
        if not pairs:
            raise InputError(f"The labels of {name} contain no objects in any slice; annotate at least one object.")
        return pairs
    raise InputError(f"{name}: labels must be (H, W) or a stack (Z, H, W); got shape {label.shape}.")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _label_file_for(image_path: Path, label_files: list[Path]) -> Path | None:
    """The one label file named like ``image_path`` (see ``LABEL_NAME_ENDINGS``); an error if several are."""
    names = {image_path.stem + ending for ending in LABEL_NAME_ENDINGS}
    matches = [path for path in label_files if path.stem in names and path != image_path]
    if len(matches) > 1:
        raise InputError(
            f"Several label files could belong to {image_path.name}: {', '.join(p.name for p in matches)} (in "
            f"{matches[0].parent}). Keep one of them, or move the others out of the label folder."
        )
    return matches[0] if matches else None


def load_folder_pairs(image_dir: str | os.PathLike, label_dir: str | os.PathLike) -> list[TrainingPair]:
    """Training pairs from a folder of images and a folder of instance label images.

    Labels are matched to images by file name: ``cell1.tif`` goes with ``cell1.tif``,
    ``cell1.png``, ``cell1_labels.tif``, ``cell1_masks.png`` and similar. Every image
    needs exactly one label file; each pair is validated (see ``validate_pair``).

    Parameters
    ----------
    image_dir, label_dir
        The folder of images and the folder of their label images.

    Returns
    -------
    list of TrainingPair
        One validated pair per image, in file-name order.

    Raises
    ------
    InputError
        A folder is missing or empty, an image has no label file or several candidates,
        or a pair is not valid.
    """
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise InputError(f"The {what} folder {folder} does not exist or is not a folder.")
    images = _files(image_dir, IMAGE_SUFFIXES)
    if not images:
        raise InputError(
            f"The image folder {image_dir} contains no images ({', '.join(IMAGE_SUFFIXES)} files)."
        )
    label_files = _files(label_dir, LABEL_SUFFIXES)
    if not label_files:
        raise InputError(f"The label folder {label_dir} contains no label images ({', '.join(LABEL_SUFFIXES)}).")
    matches = {image_path: _label_file_for(image_path, label_files) for image_path in images}
    missing = [image_path.name for image_path, match in matches.items() if match is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(
            f"No label image in {label_dir} for {shown}; name labels like their image "
            "(e.g. img1.tif -> img1.tif or img1_labels.tif)."
        )
    return [
        validate_pair(read_image_file(image_path), read_image_file(match), name=str(image_path))
        for image_path, match in matches.items()
    ]


# ----------------------------------------------------------------------------- model input


@dataclass
class PreparedSample:
    """One training image as the model sees it.

    ``model_input``: ``(1, 3, S, S)`` normalised tensor (what the Predictor feeds the
    encoder); ``labels``: ``(S, S)`` long instance labels in the INPUT frame, 0 in the
    padding; ``valid_size``: ``(h, w)`` of the image inside the padded input.
    """

    model_input: torch.Tensor
    labels: torch.Tensor
    valid_size: tuple[int, int]


def _augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation by multiples of 90 degrees and flip (pixel-exact for labels)."""
    turns = int(rng.integers(4))
    image, labels = np.rot90(image, turns, axes=(0, 1)), np.rot90(labels, turns)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    return image, labels


def _random_crop(
    image: np.ndarray, labels: np.ndarray, crop_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop_size`` window (or the whole axis if shorter) that contains at least one object if it can."""
    h, w = labels.shape
    ch, cw = min(h, crop_size), min(w, crop_size)
    for _ in range(10):
        r = int(rng.integers(h - ch + 1))
        c = int(rng.integers(w - cw + 1))
        crop_labels = labels[r : r + ch, c : c + cw]
        if crop_labels.any():
            break
    return image[r : r + ch, c : c + cw], crop_labels


def labels_to_input_frame(
    labels: np.ndarray, config: SamConfig, squash: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """``(H, W)`` labels -> ``(S, S)`` int64 labels in SAM's input frame (nearest neighbour, zero padding).

    Parameters
    ----------
    labels
        ``(H, W)`` instance labels, pixel frame.
    config
        The model's configuration (``img_size`` S).
    squash
        Resize the whole image to S x S, aspect ratio not kept, as SAM 2 takes images
        (no padding); False: the longest side to S, as SAM.

    Returns
    -------
    labels : np.ndarray
        ``(S, S)`` int64, the resized labels at the top left, 0 in the padding.
    valid_size : tuple of int
        ``(h, w)`` of the resized labels (the longest side is S; both with ``squash``).
    """
    from napari_sam.engine.predict.preprocessing import resized_shape

    s = config.img_size
    h, w = (s, s) if squash else resized_shape(labels.shape, s)
    rows = np.minimum(((np.arange(h) + 0.5) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1)
    canvas = np.zeros((s, s), dtype=np.int64)
    canvas[:h, :w] = labels[rows[:, None], cols[None, :]]
    return canvas, (h, w)


def prepare_sample(
    pair: TrainingPair,
    config: SamConfig,
    device: torch.device | str = "cpu",
    rng: np.random.Generator | None = None,
    augment: bool = False,
    crop_size: int | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PreparedSample:
    """Turn a pair into the model's input and input-frame labels, exactly as the Predictor prepares images.

    With ``crop_size`` a random window of that many pixels (original frame) is taken
    first, its intensities scaled with the whole image's range (as the Predictor
    would scale the whole image); ``augment`` adds random 90-degree turns and flips.

    Parameters
    ----------
    pair
        A validated pair (pixel frame).
    config
        The model's configuration (input size, normalisation).
    device
        Where the tensors are made.
    rng
        Random source of crops and augmentation; None: a generator seeded with 0.
    augment
        Random rotation by multiples of 90 degrees and flip.
    crop_size
        Take a random window of at most this many pixels per side (one that holds an
        object, when one of ten tries finds it); None or a smaller image: the whole image.
    normalize
        A model's own input transform (SAM 2's ``normalize_input``: ``(1, 3, H, W)`` 0-255
        RGB -> ``(1, 3, S, S)``, the whole image squashed into the square); the labels are
        then squashed alike. None: SAM's (longest side to S, zero padding).

    Returns
    -------
    PreparedSample
        The model input, input-frame labels and the valid size.

    Raises
    ------
    InputError
        The image cannot be used (see :func:`~napari_sam.engine.predict.preprocessing.to_uint8_rgb`).
    """
    import torch

    from napari_sam.engine.predict.preprocessing import (
        image_to_model_input,
        intensity_range,
        to_uint8_rgb,
    )

    image, labels = pair.image, pair.labels
    rng = rng if rng is not None else np.random.default_rng(0)
    scale_range = None
    if crop_size is not None and max(labels.shape) > crop_size:
        channel_axis = -1 if image.ndim == 3 else None
        if image.dtype != np.uint8:
            scale_range = intensity_range(image, channel_axis=channel_axis)
        image, labels = _random_crop(image, labels, crop_size, rng)
    if augment:
        image, labels = _augment(image, labels, rng)
    rgb = to_uint8_rgb(np.ascontiguousarray(image), scale_range)
    if normalize is not None:  # as the Predictor prepares an image for SAM 2
        model_input = normalize(torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None])
    else:
        model_input = image_to_model_input(rgb, config, device)
    input_labels, valid_size = labels_to_input_frame(np.ascontiguousarray(labels), config, normalize is not None)
    return PreparedSample(model_input, torch.from_numpy(input_labels).to(device), valid_size)


def check_training_data(data: Sequence, what: str = "training data") -> None:
    """Fail early with a clear message when a dataset is empty.

    Parameters
    ----------
    data
        Any sized sequence.
    what
        Names the data in the message.

    Raises
    ------
    InputError
        ``data`` is empty.
    """
    if len(data) == 0:
        raise InputError(f"The {what} is empty: give at least one image with instance labels.")


class ValidatedPairs(Sequence):
    """A sequence of ``(image, labels[, name])`` items, each validated on access.

    Lazy datasets (``SyntheticDataset``) generate items on access, so they are
    checked one by one as the training reaches them; :class:`TrainingPair` items
    (made by :func:`validate_pair`) pass unchanged.
    """

    def __init__(self, data: Sequence, what: str) -> None:
        self.data = data
        self.what = what

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> TrainingPair:
        item = self.data[index]
        if isinstance(item, TrainingPair):
            return item
        name = item[2] if len(item) > 2 else f"{self.what}[{index}]"
        return validate_pair(item[0], item[1], name=name)


def as_training_pairs(data: Sequence | None, what: str) -> ValidatedPairs:
    """Any sequence of ``(image, labels[, name])`` -> a lazily validated sequence of :class:`TrainingPair`.

    Parameters
    ----------
    data
        Lists of pairs, ``load_folder_pairs``, ``pairs_from_arrays``, ``SyntheticDataset``...
    what
        Names the data in error messages ("training data", "validation data").

    Returns
    -------
    ValidatedPairs
        A view of ``data`` that validates each item when it is read.

    Raises
    ------
    InputError
        ``data`` is None, a path, or empty.
    """
    if data is None:
        raise InputError(f"No {what} given.")
    if isinstance(data, (str, Path)):
        raise InputError(f"{what}: pass pairs (see load_folder_pairs / pairs_from_arrays), not a path.")
    check_training_data(data, what)
    return ValidatedPairs(data, what)


def count_objects(pairs: Sequence[TrainingPair], min_size: int = 1) -> int:
    """Total number of objects in a (small, in-memory) list of pairs.

    Parameters
    ----------
    pairs
        Pairs whose labels are read now.
    min_size
        Objects with fewer pixels are not counted.

    Returns
    -------
    int
        Objects over all pairs.
    """
    return int(sum(object_ids(p.labels, min_size).size for p in pairs))
