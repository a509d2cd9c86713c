"""Zoo downloads against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from napari_sam.model import zoo
from napari_sam.model.errors import (
    ChecksumMismatchError,
    DownloadError,
    UnknownModelError,
)

MODEL_NAME = "local_test_model"
FILE_NAME = "served_weights.pth"


class _CountingHandler(SimpleHTTPRequestHandler):
    """Serves files from a folder and records every requested path."""

    def __init__(self, *args, requests_seen: list[str], **kwargs):
        self.requests_seen = requests_seen
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.requests_seen.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def file_server(tmp_path):
    """(base URL, served folder, list of requested paths) of an HTTP server on an ephemeral port."""
    served = tmp_path / "served"
    served.mkdir()
    requests_seen: list[str] = []
    handler = partial(_CountingHandler, directory=str(served), requests_seen=requests_seen)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served, requests_seen
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(zoo.CACHE_ENV_VAR, str(folder))
    return folder


def _register(
    monkeypatch, url: str, content: bytes, config_name: str = "tiny_vit_test", algorithm: str = "sha256"
) -> zoo.ZooEntry:
    """A zoo entry for ``url`` whose published hash (``algorithm``: sha256, or xxh128 as micro-sam
    publishes) is that of ``content``."""
    import xxhash

    xxh128 = xxhash.xxh3_128_hexdigest(content) if algorithm == "xxh128" else ""
    entry = zoo.ZooEntry(
        name=MODEL_NAME,
        config_name=config_name,
        url=url,
        sha256="" if xxh128 else hashlib.sha256(content).hexdigest(),
        xxh128=xxh128,
        filename="local_test_model.pth",
        description="test entry",
        license="test",
        citation="test",
        hash_source="computed in the test",
    )
    monkeypatch.setitem(zoo.REGISTRY, MODEL_NAME, entry)
    return entry


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cache_dir_follows_environment_variable(cache):
    assert zoo.cache_dir() == cache
    assert zoo.cached_path("vit_b") == cache / "sam_vit_b_01ec64.pth"


def test_unknown_name_lists_known_models():
    with pytest.raises(UnknownModelError, match="Known models: vit_b, vit_l, vit_h, vit_t"):
        zoo.fetch_checkpoint("vit_q")


def test_download_lands_in_cache_and_is_not_repeated(file_server, cache, monkeypatch):
    base_url, served, requests_seen = file_server
    content = b"pretend weights " * 5000
    (served / FILE_NAME).write_bytes(content)
    entry = _register(monkeypatch, f"{base_url}/{FILE_NAME}", content)

    path = zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    assert path == cache / entry.filename
    assert path.read_bytes() == content
    assert requests_seen == [f"/{FILE_NAME}"]
    assert zoo.is_cached(MODEL_NAME)

    assert zoo.fetch_checkpoint(MODEL_NAME, progress=True) == path
    assert len(requests_seen) == 1

    # Without the "already verified" marker the file is hashed again, still without downloading.
    for marker in cache.glob("*.verified.json"):
        marker.unlink()
    assert zoo.fetch_checkpoint(MODEL_NAME, progress=False) == path
    assert len(requests_seen) == 1


def test_wrong_hash_is_rejected_and_not_cached(file_server, cache, monkeypatch):
    base_url, served, requests_seen = file_server
    (served / FILE_NAME).write_bytes(b"tampered or truncated file")
    entry = _register(monkeypatch, f"{base_url}/{FILE_NAME}", b"the file that was published")

    with pytest.raises(ChecksumMismatchError) as info:
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    message = str(info.value)
    assert entry.sha256 in message
    assert "deleted and not cached" in message
    assert requests_seen  # it really downloaded before refusing
    leftovers = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert leftovers == []


def test_unreachable_server_explains_manual_placement(cache, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/weights.pth"
    entry = _register(monkeypatch, url, b"anything")

    with pytest.raises(DownloadError) as info:
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    assert not isinstance(info.value, ChecksumMismatchError)
    message = str(info.value)
    assert url in message
    assert str(cache / entry.filename) in message
    assert repr(entry.filename) in message
    assert entry.sha256 in message
    assert zoo.CACHE_ENV_VAR in message


def test_http_error_names_the_url(file_server, cache, monkeypatch):
    base_url, _, requests_seen = file_server
    url = f"{base_url}/does_not_exist.pth"
    _register(monkeypatch, url, b"anything")
    with pytest.raises(DownloadError, match="404") as info:
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)
    assert url in str(info.value)
    assert requests_seen == ["/does_not_exist.pth"]


def test_file_placed_by_hand_is_used_without_network(cache, monkeypatch):
    content = b"copied from a USB stick"
    entry = _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/w.pth", content)
    cache.mkdir(parents=True)
    (cache / entry.filename).write_bytes(content)
    assert zoo.fetch_checkpoint(MODEL_NAME, progress=False) == cache / entry.filename


def test_corrupted_cached_file_is_downloaded_again(file_server, cache, monkeypatch):
    base_url, served, requests_seen = file_server
    content = b"good weights" * 100
    (served / FILE_NAME).write_bytes(content)
    entry = _register(monkeypatch, f"{base_url}/{FILE_NAME}", content)
    path = zoo.fetch_checkpoint(MODEL_NAME, progress=False)
    path.write_bytes(b"bit rot")  # changes size and mtime: the verified marker no longer applies

    assert zoo.fetch_checkpoint(MODEL_NAME, progress=False) == cache / entry.filename
    assert path.read_bytes() == content
    assert len(requests_seen) == 2


def test_load_model_by_zoo_name_downloads_and_builds(file_server, cache, monkeypatch, tmp_path):
    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.checkpoint import load_model, save_checkpoint

    base_url, served, requests_seen = file_server
    torch.manual_seed(7)
    model = build_sam("tiny_vit_test")
    save_checkpoint(model, served / FILE_NAME)
    _register(monkeypatch, f"{base_url}/{FILE_NAME}", (served / FILE_NAME).read_bytes())

    loaded = load_model(MODEL_NAME, device="cpu", progress=False)

    assert loaded.config.name == "tiny_vit_test"
    assert len(requests_seen) == 1
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_zoo_entry_with_wrong_architecture_is_reported(file_server, cache, monkeypatch):
    import torch

    from napari_sam.model import build_sam
    from napari_sam.model.checkpoint import load_model, save_checkpoint
    from napari_sam.model.errors import ArchitectureMismatchError

    base_url, served, _ = file_server
    torch.manual_seed(0)
    save_checkpoint(build_sam("tiny_vit_test"), served / FILE_NAME)
    _register(monkeypatch, f"{base_url}/{FILE_NAME}", (served / FILE_NAME).read_bytes(), "tiny_tinyvit_test")

    with pytest.raises(ArchitectureMismatchError, match="matches 'tiny_vit_test' instead"):
        load_model(MODEL_NAME, device="cpu", progress=False)


def test_manual_install_hint_for_a_real_entry(cache):
    hint = zoo.manual_install_hint("vit_t")
    entry = zoo.get_entry("vit_t")
    assert entry.url in hint and str(Path(cache) / "mobile_sam.pt") in hint


# ----------------------------------------------------------------------------- xxh128 (micro-sam's published hashes)


def test_xxh128_entry_downloads_verifies_and_is_not_repeated(file_server, cache, monkeypatch):
    import xxhash

    base_url, served, requests_seen = file_server
    content = b"weights published with an xxh128 hash " * 3000
    (served / FILE_NAME).write_bytes(content)
    entry = _register(monkeypatch, f"{base_url}/{FILE_NAME}", content, algorithm="xxh128")
    assert entry.known_hash == f"xxh128:{xxhash.xxh3_128_hexdigest(content)}" and entry.sha256 == ""

    path = zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    assert path == cache / entry.filename and path.read_bytes() == content
    assert requests_seen == [f"/{FILE_NAME}"]
    assert zoo.fetch_checkpoint(MODEL_NAME, progress=False) == path and len(requests_seen) == 1
    # a file placed by hand with the same content is hashed with xxh128 too (no marker, no network)
    for marker in cache.glob("*.verified.json"):
        marker.unlink()
    assert zoo.fetch_checkpoint(MODEL_NAME, progress=False) == path and len(requests_seen) == 1


def test_xxh128_mismatch_is_rejected_and_not_cached(file_server, cache, monkeypatch):
    base_url, served, requests_seen = file_server
    (served / FILE_NAME).write_bytes(b"a different file than the one published")
    entry = _register(monkeypatch, f"{base_url}/{FILE_NAME}", b"the published file", algorithm="xxh128")

    with pytest.raises(ChecksumMismatchError) as info:
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    message = str(info.value)
    assert f"xxh128 {entry.xxh128}" in message and "deleted and not cached" in message
    assert f"xxh128 must be {entry.xxh128}" in message  # the manual-install hint names the right hash
    assert requests_seen == [f"/{FILE_NAME}"]
    leftovers = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert leftovers == []


def test_xxh128_unreachable_server_explains_manual_placement(cache, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/weights.pth"
    entry = _register(monkeypatch, url, b"anything", algorithm="xxh128")

    with pytest.raises(DownloadError) as info:
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    assert not isinstance(info.value, ChecksumMismatchError)
    message = str(info.value)
    assert url in message and str(cache / entry.filename) in message
    assert f"xxh128 must be {entry.xxh128}" in message


def test_xxh128_entry_without_xxhash_says_what_to_install(cache, monkeypatch):
    import sys

    entry = _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/w.pth", b"anything", algorithm="xxh128")
    monkeypatch.setitem(sys.modules, "xxhash", None)  # import xxhash now raises ImportError
    with pytest.raises(DownloadError, match="pip install xxhash"):
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)
    assert not (cache / entry.filename).exists()


# ----------------------------------------------------------------------------- micro-sam entries: model + decoder


DECODER_FILE = "served_decoder.pt"


def _serve_model_with_decoder(served: Path):
    """A tiny SAM file and a decoder file in micro-sam's published formats; returns (model, sam bytes, decoder bytes)."""
    from collections import OrderedDict
    from dataclasses import replace

    import torch

    from napari_sam.model import InstanceDecoderConfig, build_sam
    from napari_sam.model.config import TINY_VIT
    from napari_sam.model.decoders import split_decoder_state

    torch.manual_seed(0)
    model = build_sam(replace(TINY_VIT, instance_decoder=InstanceDecoderConfig(embed_dim=32, initial_features=8)))
    sam_state, decoder_state = split_decoder_state(model.state_dict())
    torch.save(OrderedDict(sam_state), served / FILE_NAME)  # micro-sam's vit_*.pt: the SAM state dict
    torch.save(OrderedDict(decoder_state), served / DECODER_FILE)  # vit_*_decoder.pt: the decoder's, no prefix
    return model, (served / FILE_NAME).read_bytes(), (served / DECODER_FILE).read_bytes()


def _register_with_decoder(monkeypatch, base_url: str, content: bytes, decoder_content: bytes) -> zoo.ZooEntry:
    import dataclasses

    import xxhash

    entry = _register(monkeypatch, f"{base_url}/{FILE_NAME}", content, algorithm="xxh128")
    entry = dataclasses.replace(
        entry,
        decoder_url=f"{base_url}/{DECODER_FILE}",
        decoder_xxh128=xxhash.xxh3_128_hexdigest(decoder_content),
        decoder_filename="local_test_model_decoder.pt",
    )
    monkeypatch.setitem(zoo.REGISTRY, MODEL_NAME, entry)
    return entry


def test_entry_with_decoder_downloads_both_verifies_and_attaches_the_decoder(file_server, cache, monkeypatch):
    import torch

    from napari_sam.model import load_model

    base_url, served, requests_seen = file_server
    source, content, decoder_content = _serve_model_with_decoder(served)
    entry = _register_with_decoder(monkeypatch, base_url, content, decoder_content)
    assert not zoo.is_cached(MODEL_NAME)

    model = load_model(MODEL_NAME, device="cpu", progress=False)

    assert sorted(requests_seen) == sorted([f"/{FILE_NAME}", f"/{DECODER_FILE}"])
    assert (cache / entry.filename).read_bytes() == content
    assert (cache / entry.decoder_filename).read_bytes() == decoder_content
    assert zoo.is_cached(MODEL_NAME)
    assert model.instance_decoder is not None
    embedding = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.instance_decoder(embedding), source.instance_decoder(embedding))
    # verified once: loading again asks the server for nothing
    load_model(MODEL_NAME, device="cpu", progress=False)
    assert len(requests_seen) == 2
    # the cached decoder alone is not the model: without it the entry is not complete
    (cache / entry.decoder_filename).unlink()
    assert not zoo.is_cached(MODEL_NAME)


def test_decoder_with_a_wrong_hash_is_rejected_and_not_cached(file_server, cache, monkeypatch):
    import dataclasses

    from napari_sam.model import load_model

    base_url, served, _ = file_server
    _, content, decoder_content = _serve_model_with_decoder(served)
    entry = _register_with_decoder(monkeypatch, base_url, content, decoder_content)
    entry = dataclasses.replace(entry, decoder_xxh128="0" * 32)  # the server's decoder is not the published one
    monkeypatch.setitem(zoo.REGISTRY, MODEL_NAME, entry)

    with pytest.raises(ChecksumMismatchError) as info:
        load_model(MODEL_NAME, device="cpu", progress=False)

    message = str(info.value)
    assert entry.decoder_url in message and f"xxh128 {'0' * 32}" in message
    assert f"{entry.decoder_filename!r} (its xxh128 must be {'0' * 32})" in message  # how to place it by hand
    assert not (cache / entry.decoder_filename).exists()
    assert not zoo.is_cached(MODEL_NAME)


def test_unreachable_decoder_server_explains_manual_placement(file_server, cache, monkeypatch):
    import dataclasses

    base_url, served, _ = file_server
    _, content, decoder_content = _serve_model_with_decoder(served)
    entry = _register_with_decoder(monkeypatch, base_url, content, decoder_content)
    entry = dataclasses.replace(entry, decoder_url=f"http://127.0.0.1:{_closed_port()}/{DECODER_FILE}")
    monkeypatch.setitem(zoo.REGISTRY, MODEL_NAME, entry)

    with pytest.raises(DownloadError) as info:
        zoo.fetch_checkpoint(MODEL_NAME, progress=False)

    assert not isinstance(info.value, ChecksumMismatchError)
    message = str(info.value)
    assert entry.decoder_url in message and entry.decoder_filename in message
    assert f"xxh128 must be {entry.decoder_xxh128}" in message
    assert (cache / entry.filename).is_file()  # the model file itself was fine and stays verified
    with pytest.raises(ValueError, match="has no instance decoder"):
        zoo.fetch_decoder("vit_b")
