"""Pretrained names, download cache and ``-n NAME_OR_PATH`` resolution (local HTTP server only)."""

from __future__ import annotations

import hashlib
import http.server
import inspect
import io
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from demucs_rr.errors import DownloadError, ModelNotFoundError, PackageFormatError
from demucs_rr.models import fetch, pretrained
from demucs_rr.models.package import save_package
from demucs_rr.models.pretrained import (
    DEFAULT_MODEL,
    PRETRAINED,
    PretrainedInfo,
    cache_dir,
    download,
    list_models,
    resolve_model,
)
from demucs_rr.models.registry import MODEL_CLASSES

SOURCES = ["drums", "bass", "other", "vocals"]
NAME = "tiny_test"


class TinyNet(nn.Module):
    """Stand-in model registered as ``TinyNet`` for the fake pretrained entry."""

    def __init__(
        self,
        sources: list[str],
        audio_channels: int = 2,
        samplerate: int = 8000,
        segment_length: int = 800,
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment_length = segment_length
        self.init_kwargs = {
            "sources": list(sources),
            "audio_channels": audio_channels,
            "samplerate": samplerate,
            "segment_length": segment_length,
        }
        self.proj = nn.Conv1d(audio_channels, len(sources) * audio_channels, 3, padding=1)

    def valid_length(self, length: int) -> int:
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        out = self.proj(mix)  # (B, S*C, T)
        return out.view(out.shape[0], len(self.sources), self.audio_channels, -1)


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncated: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path in self.files:
            body = self.files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path in self.truncated:  # promise more than we send, then hang up
            body = self.truncated[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 4096))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, format: str, *args) -> None:  # quiet
        pass


class Server:
    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"files": {}, "truncated": {}, "requests": []})
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.running = False


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    srv = Server()
    monkeypatch.setenv("DEMUCS_RR_REMOTE", srv.url + "/models/")
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Isolated cache and TinyNet registered."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEMUCS_RR_CACHE", str(cache))
    monkeypatch.setitem(MODEL_CLASSES, "TinyNet", TinyNet)
    return cache


@pytest.fixture
def tiny() -> tuple[TinyNet, bytes]:
    """A tiny model and its torch.save'd state dict (like an official hub file)."""
    torch.manual_seed(0)
    model = TinyNet(SOURCES).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return model, buf.getvalue()


def _register(monkeypatch, data: bytes, sig: str | None = None) -> PretrainedInfo:
    sig = sig or hashlib.sha256(data).hexdigest()[:8]
    info = PretrainedInfo(
        NAME,
        f"https://example.invalid/{NAME}-{sig}.th",
        sig,
        "TinyNet",
        {"sources": SOURCES},
        "tiny test model",
        None,
    )
    monkeypatch.setitem(PRETRAINED, NAME, info)
    return info


def _same(a: nn.Module, b: nn.Module) -> bool:
    mix = torch.randn(1, 2, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.equal(a(mix), b(mix))


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- catalogue


def test_catalogue() -> None:
    assert DEFAULT_MODEL == "demucs"
    expected = {
        "demucs": "e07c671f",
        "demucs_extra": "3646af93",
        "demucs48_hq": "28a1282c",
        "demucs_unittest": "09ebc15f",
        "tasnet": "beb46fac",
        "tasnet_extra": "df3777b2",
    }
    assert {n: i.sha256_prefix for n, i in PRETRAINED.items() if n != NAME} == expected
    assert "demucs_quantized" not in PRETRAINED
    for name, info in PRETRAINED.items():
        assert (
            info.url == f"https://dl.fbaipublicfiles.com/demucs/v3.0/{name}-{info.sha256_prefix}.th"
        )
    assert PRETRAINED["demucs"].sdr == 6.28 and PRETRAINED["tasnet_extra"].sdr == 5.97
    assert PRETRAINED["demucs48_hq"].kwargs["channels"] == 48
    assert PRETRAINED["tasnet"].kwargs == {"sources": SOURCES, "X": 10}


def test_demucs_presets_fit_constructor() -> None:
    from demucs_rr.models import demucs

    for info in PRETRAINED.values():
        if info.model_class == "Demucs":
            inspect.signature(demucs.Demucs).bind(**info.kwargs)


def test_cache_dir_precedence(monkeypatch, tmp_path) -> None:
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DEMUCS_RR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "demucs_rr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "demucs_rr"


# --------------------------------------------------------------------------- downloads


def test_download_good_hash_cached_and_loaded(server, tiny, monkeypatch, env) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    server.handler.files[f"/models/{info.filename}"] = data
    loaded = resolve_model(NAME, progress=False)
    assert isinstance(loaded, TinyNet) and not loaded.training and _same(loaded, model)
    assert (env / info.filename).read_bytes() == data
    assert _files(env) == [info.filename, info.filename + ".verified"]


def test_download_bad_hash(server, tiny, monkeypatch, env) -> None:
    _, data = tiny
    info = _register(monkeypatch, data)
    server.handler.files[f"/models/{info.filename}"] = data + b"tampered"
    with pytest.raises(DownloadError, match="checksum mismatch for http://127.0.0.1"):
        resolve_model(NAME, progress=False)
    assert _files(env) == []


def test_download_404_gives_manual_hint(server, tiny, monkeypatch, env) -> None:
    info = _register(monkeypatch, tiny[1])
    with pytest.raises(DownloadError) as err:
        resolve_model(NAME, progress=False)
    message = str(err.value)
    assert "\n" not in message and "HTTP 404" in message
    assert f"put it at {env / info.filename}" in message and "-n /path/to/file" in message
    assert _files(env) == []


def test_download_interrupted(server, tiny, monkeypatch, env) -> None:
    info = _register(monkeypatch, tiny[1])
    server.handler.truncated[f"/models/{info.filename}"] = tiny[1]
    with pytest.raises(DownloadError, match="interrupted") as err:
        resolve_model(NAME, progress=False)
    assert "\n" not in str(err.value)
    assert _files(env) == []


def test_download_unreachable(tiny, monkeypatch, env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("DEMUCS_RR_REMOTE", f"http://127.0.0.1:{port}")
    info = _register(monkeypatch, tiny[1])
    with pytest.raises(DownloadError, match="could not download") as err:
        resolve_model(NAME, progress=False)
    assert "\n" not in str(err.value) and str(env / info.filename) in str(err.value)
    assert _files(env) == []


def test_cached_file_reused_without_network(server, tiny, monkeypatch) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    server.handler.files[f"/models/{info.filename}"] = data
    resolve_model(NAME, progress=False)
    server.stop()
    assert len(server.handler.requests) == 1

    def no_rehash(path):
        raise AssertionError("verified cached file was hashed again")

    monkeypatch.setattr(fetch, "_sha256_file", no_rehash)
    assert _same(resolve_model(NAME, progress=False), model)


def test_hand_placed_cache_file_verified_once(tiny, monkeypatch, env) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    monkeypatch.setenv("DEMUCS_RR_REMOTE", "http://127.0.0.1:9/unused")
    env.mkdir()
    (env / info.filename).write_bytes(data)
    assert _same(resolve_model(NAME, progress=False), model)
    assert (env / (info.filename + ".verified")).is_file()

    (env / info.filename).write_bytes(data + b"x")  # changed file: hashed again, refused
    with pytest.raises(DownloadError, match="checksum mismatch for cached file"):
        resolve_model(NAME, progress=False)


def test_download_function(server, tmp_path) -> None:
    data = b"0123456789" * 1000
    server.handler.files["/models/blob.th"] = data
    dest = tmp_path / "d" / "blob.th"
    sig = hashlib.sha256(data).hexdigest()[:8]
    assert download(server.url + "/models/blob.th", dest, sig, progress=False) == dest
    assert dest.read_bytes() == data and not dest.with_suffix(".part").exists()


# --------------------------------------------------------------------------- resolution


def test_unknown_names() -> None:
    with pytest.raises(ModelNotFoundError, match="demucs-rr models list") as err:
        resolve_model("no_such_model")
    assert "demucs_extra" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="DiffQ"):
        resolve_model("demucs_quantized")
    with pytest.raises(ModelNotFoundError, match="no model file"):
        resolve_model("missing/model.th")


def test_resolve_local_files(tiny, monkeypatch, tmp_path) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    package = save_package(model, tmp_path / "pkg.safetensors")
    assert _same(resolve_model(str(package)), model)

    hub_named = tmp_path / info.filename  # bare state dict, architecture from the name
    hub_named.write_bytes(data)
    assert _same(resolve_model(str(hub_named)), model)

    anonymous = tmp_path / "weights.th"
    anonymous.write_bytes(data)
    with pytest.raises(PackageFormatError, match="bare weights"):
        resolve_model(str(anonymous))
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(PackageFormatError, match="unsupported model file type"):
        resolve_model(str(other))


def test_resolve_from_repo(tiny, monkeypatch, tmp_path) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / info.filename).write_bytes(data)
    assert _same(resolve_model(NAME, repo=repo), model)  # {name}-*.th, no network
    save_package(model, repo / "mine.safetensors", name="mine")
    assert _same(resolve_model("mine", repo=repo), model)
    with pytest.raises(ModelNotFoundError, match="also not found in"):
        resolve_model("other", repo=repo)
    rows = {row["name"]: row for row in list_models(repo)}
    assert rows["mine"]["class"] == "TinyNet" and rows["mine"]["cached"]
    assert rows[NAME]["class"] == "TinyNet"


def test_official_package_dispatch(tiny, monkeypatch, tmp_path) -> None:
    model, data = tiny
    path = tmp_path / "local.th"
    torch.save(
        {
            "klass": TinyNet,
            "args": (),
            "kwargs": {"sources": SOURCES},
            "state": model.state_dict(),
            "training_args": None,
        },
        path,
    )
    assert pretrained.is_official_package(path)
    plain = tmp_path / "plain.th"
    plain.write_bytes(data)
    assert not pretrained.is_official_package(plain)
    legacy = sys.modules.get("demucs_rr.models.legacy") or __import__(
        "demucs_rr.models.legacy", fromlist=["x"]
    )
    monkeypatch.setattr(legacy, "model_from_official_package", lambda p: model.train())
    loaded = resolve_model(str(path))
    assert loaded is model and not loaded.training


def test_list_models(tiny, monkeypatch, env) -> None:
    info = _register(monkeypatch, tiny[1])
    env.mkdir()
    (env / info.filename).write_bytes(tiny[1])
    rows = {row["name"]: row for row in list_models()}
    assert set(PRETRAINED) <= set(rows)
    assert rows[NAME]["cached"] and not rows["demucs"]["cached"]
    assert rows["demucs"]["path"] == str(env / "demucs-e07c671f.th")
    assert rows["demucs"] | {"cached": False} == {
        "name": "demucs",
        "class": "Demucs",
        "sdr": 6.28,
        "valid_nsdr": None,
        "cached": False,
        "description": PRETRAINED["demucs"].description,
        "path": rows["demucs"]["path"],
    }
