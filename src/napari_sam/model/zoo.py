"""The model zoo: named, published SAM checkpoints and their download.

Every entry names an architecture in :data:`napari_sam.model.config.CONFIGS`, a
download URL and the file's sha256 as published by an independent public source
(the comment above each entry says where), or its xxh128 where that is what the
publisher gives (micro-sam). A file is only ever used after its hash matched, so a
mirror URL is as safe as the original one. micro-sam's entries also name their
instance decoder (a second file, its own URL and xxh128), fetched with the model.

Nothing is downloaded at import time, and this module imports neither torch nor
pooch at module level (the napari manifest and widgets import it to list names).

Cache: ``$NAPARI_SAM_CACHE_DIR`` if set, else pooch's per-user cache folder for
"napari-sam" (``~/.cache/napari-sam`` on Linux). A user without internet access can
copy a checkpoint there by hand under the entry's ``filename``;
:func:`manual_install_hint` says where.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_sam.model.errors import (
    ChecksumMismatchError,
    DownloadError,
    UnknownModelError,
)

CACHE_ENV_VAR = "NAPARI_SAM_CACHE_DIR"

# How entries expect their input image to be prepared before the image encoder.
PREPROCESS_SAM = "sam"  # longest side resized to img_size, (x - pixel_mean) / pixel_std, zero-pad to a square
PREPROCESS_MEDSAM = "medsam"  # whole image resized to img_size x img_size, min-max scaled to [0, 1]
PREPROCESSINGS = (PREPROCESS_SAM, PREPROCESS_MEDSAM)


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint.

    ``config_name`` is a key of ``CONFIGS``; ``filename`` is the name the file gets in
    the cache folder (and the name to use when placing it there by hand).
    """

    name: str
    config_name: str
    url: str
    sha256: str
    filename: str
    description: str
    license: str
    citation: str
    hash_source: str
    preprocessing: str = PREPROCESS_SAM
    notes: str = ""
    prompt_mode: str = "points"  # "box": trained on box prompts only (MedSAM); the annotator starts with boxes
    xxh128: str = ""
    """The file's xxh128 (hex) where that is what its publisher gives (micro-sam v2+); then ``sha256`` may be ""."""
    decoder_url: str = ""
    """micro-sam's instance segmentation decoder published with the model ("" for none)."""
    decoder_xxh128: str = ""
    decoder_filename: str = ""

    @property
    def known_hash(self) -> str:
        """The hash a download must match, as pooch takes it: ``"sha256:<hex>"`` or ``"xxh128:<hex>"``."""
        return f"xxh128:{self.xxh128}" if self.xxh128 else f"sha256:{self.sha256}"

    @property
    def decoder_known_hash(self) -> str:
        """The hash the decoder download must match (``"xxh128:<hex>"``); "" without a decoder."""
        return f"xxh128:{self.decoder_xxh128}" if self.decoder_url else ""

    @property
    def has_decoder(self) -> bool:
        """Whether the entry comes with an instance segmentation decoder."""
        return bool(self.decoder_url)


_SAM_CITATION = "Kirillov et al., Segment Anything, ICCV 2023 (arXiv:2304.02643)"
_MICROSAM_CITATION = "Archit et al., Segment Anything for Microscopy, Nature Methods 2025 (bioRxiv 2023.08.21.554208)"
_MICROSAM_HASH_SOURCE = (
    "micro-sam's model registry (micro_sam/util.py, releases 0.2.x, 'first version of finetuned models on zenodo'),"
    " github.com/computational-cell-analytics/micro-sam"
)

# micro-sam's current light microscopy (lm) and electron microscopy organelle (em_organelles) models on
# bioimage.io: (size, domain, record/version, encoder xxh128, decoder xxh128). URLs and xxh128 hashes as published
# in micro-sam's model registry (micro_sam/util.py, github.com/computational-cell-analytics/micro-sam, v1.x).
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"
_MICROSAM_V2 = (
    ("t", "lm", "faithful-chicken/1.1", "72ec5074774761a6e5c05a08942f981e", "3e914a5f397b0312cdd36813031f8823"),
    ("b", "lm", "diplomatic-bug/1.2", "fe9252a29f3f4ea53c15a06de471e186", "708b15ac620e235f90bb38612c4929ba"),
    ("l", "lm", "idealistic-rat/1.2", "017f20677997d628426dec80a8018f9d", "2faeafa03819dfe03e7c46a44aaac64a"),
    ("t", "em_organelles", "greedy-whale/1", "253474720c497cce605e57c9b1d18fd9", "8f897c7bb93174a4d1638827c4dd6f44"),
    ("b", "em_organelles", "noisy-ox/1.2", "f3bf2ed83d691456bae2c3f9a05fb438", "bb6398956a6b0132c26b631c14f95ce2"),
    ("l", "em_organelles", "humorous-crab/1.2", "810b084b6e51acdbf760a993d8619f2d", "334877640bfdaaabce533e3252a17294"),
)
_MICROSAM_SIZES = {"t": "ViT-T (TinyViT)", "b": "ViT-B", "l": "ViT-L"}
_MICROSAM_DOMAINS = {
    "lm": "cells and nuclei in light microscopy",
    "em_organelles": "organelles (mitochondria, nuclei) in electron microscopy",
}
_MICROSAM_V2_HASH_SOURCE = (
    "micro-sam's model registry (micro_sam/util.py, releases 1.x, commit df11268e), "
    "github.com/computational-cell-analytics/micro-sam"
)

_ENTRIES: tuple[ZooEntry, ...] = (
    # --- Meta's Segment Anything. sha256 published in micro-sam's registry (micro_sam/util.py, all releases up to
    # 0.2.x) and matching the Git-LFS sha256 of many public mirrors of the same file (e.g. huggingface.co
    # mashb1t/misc, netradrishti/sam), and numerous sha256sum checks in public Dockerfiles / setup scripts.
    ZooEntry(
        name="vit_b",
        config_name="vit_b",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        filename="sam_vit_b_01ec64.pth",
        description="Segment Anything ViT-B (Meta), 375 MB: fastest of the original models",
        license="Apache-2.0",
        citation=_SAM_CITATION,
        hash_source="micro-sam registry (micro_sam/util.py) + Git-LFS sha256 of public Hugging Face mirrors",
    ),
    ZooEntry(
        name="vit_l",
        config_name="vit_l",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        filename="sam_vit_l_0b3195.pth",
        description="Segment Anything ViT-L (Meta), 1.25 GB",
        license="Apache-2.0",
        citation=_SAM_CITATION,
        hash_source="micro-sam registry (micro_sam/util.py) + Git-LFS sha256 of public Hugging Face mirrors",
    ),
    ZooEntry(
        name="vit_h",
        config_name="vit_h",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        filename="sam_vit_h_4b8939.pth",
        description="Segment Anything ViT-H (Meta), 2.56 GB: most accurate, slowest",
        license="Apache-2.0",
        citation=_SAM_CITATION,
        hash_source="micro-sam registry (micro_sam/util.py) + Git-LFS sha256 of public Hugging Face mirrors",
    ),
    # --- MobileSAM (TinyViT encoder + SAM's decoder). sha256 published in micro-sam's registry (for its own copy of
    # mobile_sam.pt) and recorded, with size 40,728,226 bytes, for weights/mobile_sam.pt at MobileSAM commit
    # f706ad9c by several independent public projects. The URL is pinned to that commit.
    ZooEntry(
        name="vit_t",
        config_name="vit_t",
        url=(
            "https://github.com/ChaoningZhang/MobileSAM/raw/"
            "f706ad9c4eb7f219c00d9050e46328518ffb65d2/weights/mobile_sam.pt"
        ),
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        filename="mobile_sam.pt",
        description="MobileSAM ViT-T (TinyViT encoder), 39 MB: runs interactively on a laptop CPU",
        license="Apache-2.0",
        citation=(
            "Zhang et al., Faster Segment Anything: Towards Lightweight SAM for Mobile Applications (arXiv:2306.14289)"
        ),
        hash_source=(
            "micro-sam registry (micro_sam/util.py) + public records of MobileSAM@f706ad9c weights/mobile_sam.pt"
        ),
    ),
    # --- micro-sam, first published fine-tunes (Zenodo, Aug 2023). sha256 from micro-sam's own pooch registry
    # (micro_sam/util.py in the 0.2.x releases). These files are plain state dicts in the official layout
    # (micro-sam's exporter strips the "sam." prefix of its training checkpoints before saving); loading also
    # copes with the un-exported form ({"model_state": {"sam.<key>": ...}}).
    # The later generalists (vit_*_lm / vit_*_em_organelles on bioimage.io) follow below, with xxh128 hashes.
    ZooEntry(
        name="vit_b_lm_v1",
        config_name="vit_b",
        url="https://zenodo.org/record/8250281/files/vit_b_lm.pth?download=1",
        sha256="5a59cc4064092d54cd4d92cd967e39168f3760905431e868e474d60fe5464ecd",
        filename="microsam_vit_b_lm_v1.pth",
        description="micro-sam ViT-B fine-tuned for cells and nuclei in light microscopy (v1, 2023)",
        license="see Zenodo record 8250281 (micro-sam code: MIT)",
        citation=_MICROSAM_CITATION,
        hash_source=_MICROSAM_HASH_SOURCE,
    ),
    ZooEntry(
        name="vit_h_lm_v1",
        config_name="vit_h",
        url="https://zenodo.org/record/8250299/files/vit_h_lm.pth?download=1",
        sha256="9a65ee0cddc05a98d60469a12a058859c89dc3ea3ba39fed9b90d786253fbf26",
        filename="microsam_vit_h_lm_v1.pth",
        description="micro-sam ViT-H fine-tuned for cells and nuclei in light microscopy (v1, 2023)",
        license="see Zenodo record 8250299 (micro-sam code: MIT)",
        citation=_MICROSAM_CITATION,
        hash_source=_MICROSAM_HASH_SOURCE,
    ),
    ZooEntry(
        name="vit_b_em_v1",
        config_name="vit_b",
        url="https://zenodo.org/record/8250260/files/vit_b_em.pth?download=1",
        sha256="c04a714a4e14a110f0eec055a65f7409d54e6bf733164d2933a0ce556f7d6f81",
        filename="microsam_vit_b_em_v1.pth",
        description="micro-sam ViT-B fine-tuned for neurites and cells in electron microscopy (v1, 2023)",
        license="see Zenodo record 8250260 (micro-sam code: MIT)",
        citation=_MICROSAM_CITATION,
        hash_source=_MICROSAM_HASH_SOURCE,
    ),
    ZooEntry(
        name="vit_h_em_v1",
        config_name="vit_h",
        url="https://zenodo.org/record/8250291/files/vit_h_em.pth?download=1",
        sha256="ae3798a0646c8df1d4db147998a2d37e402ff57d3aa4e571792fbb911d8a979c",
        filename="microsam_vit_h_em_v1.pth",
        description="micro-sam ViT-H fine-tuned for neurites and cells in electron microscopy (v1, 2023)",
        license="see Zenodo record 8250291 (micro-sam code: MIT)",
        citation=_MICROSAM_CITATION,
        hash_source=_MICROSAM_HASH_SOURCE,
    ),
    # --- micro-sam's current generalists (bioimage.io), each with its instance segmentation decoder.
    *(
        ZooEntry(
            name=f"vit_{size}_{domain}",
            config_name=f"vit_{size}",
            url=f"{_BIOIMAGEIO}/{record}/files/vit_{size}.pt",
            sha256="",
            xxh128=encoder_hash,
            filename=f"microsam_vit_{size}_{domain}.pt",
            decoder_url=f"{_BIOIMAGEIO}/{record}/files/vit_{size}_decoder.pt",
            decoder_xxh128=decoder_hash,
            decoder_filename=f"microsam_vit_{size}_{domain}_decoder.pt",
            description=f"micro-sam {_MICROSAM_SIZES[size]} for {_MICROSAM_DOMAINS[domain]}, with its instance decoder",
            license=f"CC-BY-4.0 (declared by micro-sam's bioimage.io export; record {record}; code: MIT)",
            citation=_MICROSAM_CITATION,
            hash_source=_MICROSAM_V2_HASH_SOURCE,
        )
        for size, domain, record, encoder_hash, decoder_hash in _MICROSAM_V2
    ),
    # --- MedSAM (ViT-B fine-tuned on 1.5M medical image-mask pairs). The authors distribute medsam_vit_b.pth from a
    # Google Drive folder linked in github.com/bowang-lab/MedSAM's README, which cannot be fetched by URL; the URL
    # below is a public Hugging Face copy pinned to a commit. sha256 (size 375,049,145 bytes) from that copy's
    # Git-LFS pointer, matching independent public records of the official file's sha256. The official file was
    # saved from CUDA tensors: loading must map it to CPU (we always load with map_location="cpu").
    ZooEntry(
        name="medsam_vit_b",
        config_name="vit_b",
        url=(
            "https://huggingface.co/spaces/dennistrujillo/MedSAM_AortaTest/resolve/"
            "9ba0bac49412ef6481f666fb2931c9262a1bdfe8/medsam_vit_b.pth"
        ),
        sha256="34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
        filename="medsam_vit_b.pth",
        description="MedSAM ViT-B fine-tuned on CT/MR/X-ray/ultrasound/endoscopy/... (box prompts)",
        license="Apache-2.0 (github.com/bowang-lab/MedSAM)",
        citation="Ma et al., Segment Anything in Medical Images, Nature Communications 15, 654 (2024)",
        hash_source="Git-LFS pointer of the pinned Hugging Face copy + independent public records of the official file",
        preprocessing=PREPROCESS_MEDSAM,
        prompt_mode="box",
        notes=(
            "Trained with box prompts on images resized to 1024x1024 without keeping the aspect ratio and min-max "
            "scaled to [0, 1] (no pixel mean/std normalisation); official download: Google Drive folder linked in "
            "the MedSAM README."
        ),
    ),
)

REGISTRY: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def list_models() -> list[str]:
    """Names of all zoo models, in registry order."""
    return list(REGISTRY)


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``; :class:`UnknownModelError` listing the known names otherwise.

    Parameters
    ----------
    name
        A zoo model name (see :func:`list_models`).

    Returns
    -------
    ZooEntry
        Its architecture, URL, sha256, cache file name and provenance.

    Raises
    ------
    UnknownModelError
        ``name`` is not in the zoo.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"Unknown model name {name!r}. Known models: {', '.join(REGISTRY)}."
        ) from None


def cache_dir() -> Path:
    """Folder holding downloaded checkpoints (``$NAPARI_SAM_CACHE_DIR`` or the per-user cache)."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-sam"))


def cached_path(name: str) -> Path:
    """Where the checkpoint of zoo model ``name`` lives once downloaded (it may not exist yet).

    Parameters
    ----------
    name
        A zoo model name.

    Returns
    -------
    Path
        ``cache_dir() / entry.filename``.

    Raises
    ------
    UnknownModelError
        ``name`` is not in the zoo.
    """
    return cache_dir() / get_entry(name).filename


def is_cached(name: str) -> bool:
    """Whether the checkpoint of ``name`` is already in the cache (its hash is checked when it is fetched).

    Parameters
    ----------
    name
        A zoo model name.

    Returns
    -------
    bool
        True if a file exists at :func:`cached_path` (not hashed here), and the decoder's file too
        for an entry with a decoder.

    Raises
    ------
    UnknownModelError
        ``name`` is not in the zoo.
    """
    entry = get_entry(name)
    decoder_ok = not entry.has_decoder or (cache_dir() / entry.decoder_filename).is_file()
    return cached_path(name).is_file() and decoder_ok


def manual_install_hint(name: str) -> str:
    """Instructions for placing the checkpoint of ``name`` by hand, for machines without internet access.

    Parameters
    ----------
    name
        A zoo model name.

    Returns
    -------
    str
        A few lines naming the URL, the cache file to create, its sha256 and the alternatives
        (``$NAPARI_SAM_CACHE_DIR``, passing a file path).

    Raises
    ------
    UnknownModelError
        ``name`` is not in the zoo.
    """
    entry = get_entry(name)
    target = cached_path(name)
    decoder = ""
    if entry.has_decoder:
        decoder = (
            f"With it, its instance decoder: download {entry.decoder_url} and copy it to the same folder as "
            f"{entry.decoder_filename!r} (its {_hash_words(entry.decoder_known_hash)}).\n"
        )
    return (
        f"To install it by hand, download {entry.url} on a computer with internet access and copy it to\n"
        f"    {target}\n"
        f"(folder {target.parent}, file name {entry.filename!r}; its {_hash_words(entry.known_hash)}).\n"
        f"{decoder}"
        f"Or set {CACHE_ENV_VAR} to a folder holding those files, "
        f"or pass the file's path instead of the model name."
    )


def _hash_words(known_hash: str) -> str:
    """"sha256 must be <hex>" or "xxh128 must be <hex>", from a pooch hash ``"<algorithm>:<hex>"``."""
    algorithm, digest = known_hash.split(":", 1)
    return f"{algorithm} must be {digest}"


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _file_signature(path: Path, known_hash: str) -> dict[str, Any]:
    stat = path.stat()
    return {"hash": known_hash, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _already_verified(path: Path, known_hash: str) -> bool:
    """True if ``path`` was hash-checked before and has not changed since (same size and mtime).

    Hashing a 2.5 GB checkpoint takes seconds; doing it once per file instead of on every
    load keeps model switching fast. Any change to the file invalidates the marker.
    """
    marker = _verified_marker(path)
    try:
        recorded = json.loads(marker.read_text())
        return path.is_file() and recorded == _file_signature(path, known_hash)
    except (OSError, ValueError):
        return False


def _record_verified(path: Path, known_hash: str) -> None:
    try:
        _verified_marker(path).write_text(json.dumps(_file_signature(path, known_hash)))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _progress_bar_available() -> bool:
    try:
        import tqdm  # noqa: F401  (pooch's progress bar needs it)
    except ImportError:
        return False
    return True


def fetch_checkpoint(name: str, progress: bool | Any = True) -> Path:
    """Path of the verified checkpoint of zoo model ``name``, downloading it first if needed.

    The download goes to a temporary file in the cache folder and is moved into place only
    after its published hash (sha256, or xxh128 where that is what is published) matched; a
    mismatching file is deleted (:class:`ChecksumMismatchError`).
    A server that cannot be reached raises :class:`DownloadError` with the URL and
    instructions for placing the file by hand. An entry with an instance decoder has its
    decoder fetched (and verified) too, so the model is complete offline afterwards.

    Parameters
    ----------
    name
        A zoo model name.
    progress
        True for a terminal progress bar (needs tqdm; none without it), False for none, or
        any tqdm-like object (``update``, ``reset``, ``close``, ``total``) that pooch can drive.

    Returns
    -------
    Path
        The cached checkpoint (the decoder: :func:`fetch_decoder`). A file hashed before and unchanged
        since (same size and mtime, recorded in a ``.verified.json`` marker beside it) is returned without
        hashing it again.

    Raises
    ------
    UnknownModelError
        ``name`` is not in the zoo.
    ChecksumMismatchError
        The downloaded file does not have the published hash (it was deleted).
    DownloadError
        The server could not be reached or answered with an error, or the file could not be
        written to the cache folder.
    """
    entry = get_entry(name)
    path = _fetch_file(name, entry.url, entry.known_hash, entry.filename, progress)
    if entry.has_decoder:
        fetch_decoder(name, progress=progress)
    return path


def fetch_decoder(name: str, progress: bool | Any = True) -> Path:
    """Path of the verified instance decoder file of zoo model ``name``, downloading it first if needed.

    Same download, hash check and caching as :func:`fetch_checkpoint`, for the decoder file.

    Parameters
    ----------
    name
        A zoo model name whose entry has a decoder (:attr:`ZooEntry.has_decoder`).
    progress
        As for :func:`fetch_checkpoint`.

    Returns
    -------
    Path
        The cached decoder file.

    Raises
    ------
    UnknownModelError
        ``name`` is not in the zoo.
    ValueError
        The entry has no decoder.
    ChecksumMismatchError
        The downloaded file does not have the published hash (it was deleted).
    DownloadError
        The server could not be reached, or the file could not be written to the cache folder.
    """
    entry = get_entry(name)
    if not entry.has_decoder:
        raise ValueError(f"Zoo model {name!r} has no instance decoder.")
    return _fetch_file(name, entry.decoder_url, entry.decoder_known_hash, entry.decoder_filename, progress)


def _fetch_file(name: str, url: str, known_hash: str, filename: str, progress: bool | Any) -> Path:
    """Download ``url`` into the cache as ``filename`` unless a verified copy is there; check ``known_hash``."""
    target_dir = cache_dir()
    target = target_dir / filename
    if _already_verified(target, known_hash):
        return target

    import pooch
    import requests

    if known_hash.startswith("xxh128:"):
        try:
            import xxhash  # noqa: F401  (pooch hashes xxh128 with it)
        except ImportError as error:
            raise DownloadError(
                f"Model {name!r} is published with an xxh128 hash, which needs the 'xxhash' package to check: "
                "pip install xxhash"
            ) from error
    if progress is True and not _progress_bar_available():
        progress = False
    downloader = pooch.HTTPDownloader(progressbar=progress) if url.startswith(("http://", "https://")) else None
    existed_before = target.is_file()
    try:
        fetched = pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=filename,
            path=target_dir,
            downloader=downloader,
            progressbar=progress if downloader is None else False,
        )
    except ValueError as error:
        # pooch raises ValueError for a hash mismatch, after deleting the temporary download.
        if "hash" not in str(error).lower():
            raise DownloadError(f"Could not download model {name!r} from {url}: {error}") from error
        raise ChecksumMismatchError(
            f"The file downloaded for model {name!r} from {url} does not have the published "
            f"{known_hash.replace(':', ' ')}; it was deleted and not cached (pooch: {error}). The server may "
            f"serve a different or truncated file.\n{manual_install_hint(name)}"
        ) from error
    except (requests.exceptions.RequestException, OSError) as error:
        stale = (
            f"A file {target} exists but its hash does not match, so it was not used.\n" if existed_before else ""
        )
        raise DownloadError(
            f"Could not download model {name!r} from {url}: {error}\n{stale}{manual_install_hint(name)}"
        ) from error
    path = Path(fetched)
    _record_verified(path, known_hash)
    return path
