"""Pretrained names, download cache and ``-n NAME_OR_PATH`` resolution (local HTTP server only)."""

from __future__ import annotations

import hashlib
import http.server
import inspect
import io
import re
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from demucs_rr.errors import DownloadError, ModelNotFoundError, PackageFormatError
from demucs_rr.hub import fetch, formats, releases
from demucs_rr.hub.catalogue import DEFAULT_MODEL, PRETRAINED, PretrainedInfo
from demucs_rr.hub.fetch import download
from demucs_rr.hub.loader import list_models, load_model
from demucs_rr.hub.official_th import model_from_official_package
from demucs_rr.hub.package import save_package
from demucs_rr.hub.releases import OFFICIAL_BAGS, OFFICIAL_FILES, OfficialFile
from demucs_rr.models.bag import BagOfModels
from demucs_rr.models.hdemucs import HDemucs
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.models.registry import MODEL_CLASSES
from demucs_rr.runtime import cache_dir

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
    assert DEFAULT_MODEL == "htdemucs"
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


OFFICIAL_MEMBERS = {
    "htdemucs": "955717e8-8726e21a",
    "htdemucs_ft": "f7e0c4bc-ba3fe64a d12395a8-e57c48e6 92cfc3b6-ef3bcb9c 04573f0d-f3cf25b2",
    "htdemucs_6s": "5c90dfd2-34c22ccb",
    "hdemucs_mmi": "75fc33f5-1941ce65",
    "mdx": "0d19c1c6-0f06f20e 7ecf8ec1-70f50cc9 c511e2ab-fe698775 7d865c68-3d5dd56b",
    "mdx_extra": "e51eebcc-c1b80bdd a1d90b5c-ae9d2452 5d2d6c55-db83574e cfa93e08-61801ae1",
}
"""Released name -> its member files ({sig}-{sha256 prefix}), as published."""


def test_official_catalogue() -> None:
    assert set(OFFICIAL_MEMBERS) < set(OFFICIAL_BAGS) and DEFAULT_MODEL in OFFICIAL_BAGS
    for name, listed in OFFICIAL_MEMBERS.items():
        members = listed.split()
        info = OFFICIAL_BAGS[name]
        assert info.refused is None
        assert [f.filename for f in info.files] == [f"{m}.th" for m in members]
        folder = "mdx_final" if name.startswith("mdx") else "hybrid_transformer"
        for file, member in zip(info.files, members, strict=True):
            assert file.url == f"https://dl.fbaipublicfiles.com/demucs/{folder}/{member}.th"
    sdrs = {name: info.sdr for name, info in OFFICIAL_BAGS.items()}
    assert sdrs["htdemucs"] == 8.80 and sdrs["htdemucs_ft"] == 9.00
    assert sdrs["hdemucs_mmi"] == 8.34 and sdrs["mdx"] == 7.68
    ft = OFFICIAL_BAGS["htdemucs_ft"].spec
    assert ft.weights == [[float(i == j) for j in range(4)] for i in range(4)]
    mdx = OFFICIAL_BAGS["mdx"].spec
    assert mdx.segment == 44 and mdx.weights == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1]] + [
        [1, 0, 1, 1]
    ]
    assert OFFICIAL_BAGS["hdemucs_mmi"].spec.segment == 44
    for name in ("mdx_q", "mdx_extra_q"):
        with pytest.raises(ModelNotFoundError, match="DiffQ") as err:
            load_model(name)
        assert f"`{name[:-2]}`" in str(err.value) and "\n" not in str(err.value)
    names = {row["name"]: row for row in list_models()}
    assert names["mdx_q"]["description"].endswith("(not supported: DiffQ format)")


def test_demucs_presets_fit_constructor() -> None:
    from demucs_rr.models import demucs_v2 as demucs

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
    loaded = load_model(NAME, progress=False)
    assert isinstance(loaded, TinyNet) and not loaded.training and _same(loaded, model)
    assert (env / info.filename).read_bytes() == data
    assert _files(env) == [info.filename, info.filename + ".verified"]


def test_download_bad_hash(server, tiny, monkeypatch, env) -> None:
    _, data = tiny
    info = _register(monkeypatch, data)
    server.handler.files[f"/models/{info.filename}"] = data + b"tampered"
    with pytest.raises(DownloadError, match="checksum mismatch for http://127.0.0.1"):
        load_model(NAME, progress=False)
    assert _files(env) == []


def test_download_404_gives_manual_hint(server, tiny, monkeypatch, env) -> None:
    info = _register(monkeypatch, tiny[1])
    with pytest.raises(DownloadError) as err:
        load_model(NAME, progress=False)
    message = str(err.value)
    assert "\n" not in message and "HTTP 404" in message
    assert f"put it at {env / info.filename}" in message and "-n /path/to/file" in message
    assert _files(env) == []


def test_download_interrupted(server, tiny, monkeypatch, env) -> None:
    info = _register(monkeypatch, tiny[1])
    server.handler.truncated[f"/models/{info.filename}"] = tiny[1]
    with pytest.raises(DownloadError, match="interrupted") as err:
        load_model(NAME, progress=False)
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
        load_model(NAME, progress=False)
    assert "\n" not in str(err.value) and str(env / info.filename) in str(err.value)
    assert _files(env) == []


def test_cached_file_reused_without_network(server, tiny, monkeypatch) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    server.handler.files[f"/models/{info.filename}"] = data
    load_model(NAME, progress=False)
    server.stop()
    assert len(server.handler.requests) == 1

    def no_rehash(path):
        raise AssertionError("verified cached file was hashed again")

    monkeypatch.setattr(fetch, "_sha256_file", no_rehash)
    assert _same(load_model(NAME, progress=False), model)


def test_hand_placed_cache_file_verified_once(tiny, monkeypatch, env) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    monkeypatch.setenv("DEMUCS_RR_REMOTE", "http://127.0.0.1:9/unused")
    env.mkdir()
    (env / info.filename).write_bytes(data)
    assert _same(load_model(NAME, progress=False), model)
    assert (env / (info.filename + ".verified")).is_file()

    (env / info.filename).write_bytes(data + b"x")  # changed file: hashed again, refused
    with pytest.raises(DownloadError, match="checksum mismatch for cached file"):
        load_model(NAME, progress=False)


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
        load_model("no_such_model")
    assert "demucs_extra" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="DiffQ"):
        load_model("demucs_quantized")
    with pytest.raises(ModelNotFoundError, match="no model file"):
        load_model("missing/model.th")


def test_resolve_local_files(tiny, monkeypatch, tmp_path) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    package = save_package(model, tmp_path / "pkg.safetensors")
    assert _same(load_model(str(package)), model)

    hub_named = tmp_path / info.filename  # bare state dict, architecture from the name
    hub_named.write_bytes(data)
    assert _same(load_model(str(hub_named)), model)

    anonymous = tmp_path / "weights.th"
    anonymous.write_bytes(data)
    with pytest.raises(PackageFormatError, match="bare weights"):
        load_model(str(anonymous))
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(PackageFormatError, match="unsupported model file type"):
        load_model(str(other))


def test_resolve_from_repo(tiny, monkeypatch, tmp_path) -> None:
    model, data = tiny
    info = _register(monkeypatch, data)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / info.filename).write_bytes(data)
    assert _same(load_model(NAME, repo=repo), model)  # {name}-*.th, no network
    save_package(model, repo / "mine.safetensors", name="mine")
    assert _same(load_model("mine", repo=repo), model)
    with pytest.raises(ModelNotFoundError, match="also not found in"):
        load_model("other", repo=repo)
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
    assert formats.is_official_package(path)
    plain = tmp_path / "plain.th"
    plain.write_bytes(data)
    assert not formats.is_official_package(plain)
    legacy = sys.modules.get("demucs_rr.hub.official_th") or __import__(
        "demucs_rr.hub.official_th", fromlist=["x"]
    )
    monkeypatch.setattr(legacy, "model_from_official_package", lambda p: model.train())
    loaded = load_model(str(path))
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
        "cache_state": "no",
        "description": PRETRAINED["demucs"].description,
        "path": rows["demucs"]["path"],
    }


# --------------------------------------------------------------------------- Demucs 3/4 releases


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(releases, "download", refuse)


def _place_members(monkeypatch, cache: Path, name: str, source: Path) -> list[Path]:
    """Put ``source`` in the cache as every member of release ``name``, the expected sha256
    prefixes patched to the file's own."""
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()[:8]
    cache.mkdir(exist_ok=True)
    placed = []
    for file in OFFICIAL_BAGS[name].files:
        patched = OfficialFile(file.sig, sha, file.folder)
        monkeypatch.setitem(OFFICIAL_FILES, file.sig, patched)
        (cache / patched.filename).write_bytes(data)
        placed.append(cache / patched.filename)
    return placed


def _forward(model, official: Path, case: str) -> torch.Tensor:
    with np.load(official / case / "forward.npz") as data:
        x = torch.from_numpy(data["x"])
    with torch.no_grad():
        return model(x)


def test_default_release_resolves_from_the_cache(
    official_fixtures, env, monkeypatch, no_download, one_thread
) -> None:
    package = official_fixtures / "v4_htdemucs" / "package.th"
    placed = _place_members(monkeypatch, env, "htdemucs", package)
    model = load_model(DEFAULT_MODEL, progress=False)
    assert isinstance(model, HTDemucs) and not model.training  # a one-model bag: the model
    reference = model_from_official_package(package)
    out = _forward(model, official_fixtures, "v4_htdemucs")
    assert torch.equal(out, _forward(reference, official_fixtures, "v4_htdemucs"))
    assert (env / (placed[0].name + ".verified")).is_file()
    assert {row["name"]: row for row in list_models()}["htdemucs"]["cached"]

    def no_rehash(path):
        raise AssertionError("verified cached member was hashed again")

    monkeypatch.setattr(fetch, "_sha256_file", no_rehash)
    assert isinstance(load_model(DEFAULT_MODEL, progress=False), HTDemucs)


def test_release_bag_resolves_every_member(
    official_fixtures, env, monkeypatch, no_download, one_thread
) -> None:
    package = official_fixtures / "v4_htdemucs" / "package.th"
    assert len(_place_members(monkeypatch, env, "htdemucs_ft", package)) == 4
    bag = load_model("htdemucs_ft", progress=False)
    assert isinstance(bag, BagOfModels) and len(bag.models) == 4
    assert bag.weights == [[float(i == j) for j in range(4)] for i in range(4)]
    single = model_from_official_package(package)
    out = _forward(bag, official_fixtures, "v4_htdemucs")
    assert torch.equal(out, _forward(single, official_fixtures, "v4_htdemucs"))


def test_release_offline_message_names_every_member_file(env, monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("DEMUCS_RR_REMOTE", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError) as err:
        load_model("htdemucs_ft", progress=False)
    message = str(err.value)
    assert "\n" not in message and "could not download f7e0c4bc-ba3fe64a.th" in message
    for member in OFFICIAL_MEMBERS["htdemucs_ft"].split():
        assert f"{member}.th from http://127.0.0.1:{port}/{member}.th" in message
    assert f"put them in {env}" in message and "--repo" in message
    assert _files(env) == []


def test_release_member_with_a_wrong_checksum_is_refused(
    official_fixtures, env, no_download
) -> None:
    env.mkdir()
    placed = env / OFFICIAL_BAGS["htdemucs"].files[0].filename  # right name, other bytes
    placed.write_bytes((official_fixtures / "v4_htdemucs" / "package.th").read_bytes())
    with pytest.raises(DownloadError, match="checksum mismatch for cached file") as err:
        load_model("htdemucs", progress=False)
    assert "\n" not in str(err.value)


def test_release_members_from_repo_first(official_fixtures, tmp_path, env, no_download) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "75fc33f5.th").write_bytes(
        (official_fixtures / "v4_hdemucs" / "package.th").read_bytes()
    )
    bag = load_model("hdemucs_mmi", repo=repo, progress=False)  # bag segment 44 s
    assert isinstance(bag, BagOfModels) and bag.segment == 44
    assert isinstance(bag.models[0], HDemucs) and bag.models[0].segment_length == 44 * 44100
    assert _files(env) == []


def test_repo_bag_yaml_and_member_hashes(official_fixtures, tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for file in (official_fixtures / "bag").glob("*.yaml"):
        (repo / file.name).write_bytes(file.read_bytes())
    (repo / "e2b7f16b.th").write_bytes((official_fixtures / "bag" / "e2b7f16b.th").read_bytes())
    data = (official_fixtures / "bag" / "ec76c682.th").read_bytes()
    sha = hashlib.sha256(data).hexdigest()[:8]
    (repo / f"ec76c682-{sha}.th").write_bytes(data)
    bag = load_model("tinybag_a", repo=repo)
    assert isinstance(bag, BagOfModels) and bag.segment == 0.3
    assert [type(m).__name__ for m in bag.models] == ["DemucsV3", "HDemucs"]
    assert {row["name"]: row for row in list_models(repo)}["tinybag_a"]["class"] == "bag"

    (repo / f"ec76c682-{sha}.th").rename(repo / "ec76c682-00000000.th")
    with pytest.raises(PackageFormatError, match="not with the 00000000 its name promises"):
        load_model("tinybag_a", repo=repo)
    (repo / "ec76c682.th").write_bytes(data)
    with pytest.raises(PackageFormatError, match="several files for model ec76c682"):
        load_model("tinybag_a", repo=repo)
    (repo / "ec76c682.th").unlink()
    (repo / "ec76c682-00000000.th").unlink()
    with pytest.raises(ModelNotFoundError, match="bag tinybag_a: no file for model ec76c682"):
        load_model(str(repo / "tinybag_a.yaml"))


def test_separate_without_a_name_uses_htdemucs(
    official_fixtures, env, tmp_path, monkeypatch, no_download, one_thread
) -> None:
    """`separate song.wav` runs the default release and writes separated/htdemucs/song/."""
    import soundfile

    from demucs_rr.cli import main

    _place_members(monkeypatch, env, "htdemucs", official_fixtures / "v4_htdemucs" / "package.th")
    song = tmp_path / "song.wav"
    noise = np.random.default_rng(0).standard_normal((44100, 2))
    soundfile.write(song, 0.1 * noise, 44100)
    monkeypatch.chdir(tmp_path)
    assert main(["separate", "-q", str(song)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav"))
    assert written == sorted([f"separated/htdemucs/song/{s}.wav" for s in SOURCES] + ["song.wav"])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: ['../../etc/e2b7f16b']", "is not a plain file name"),
        ("models: []", "'models' must be a non-empty list"),
        ("models: ['a1']\nweights: [[1, 1, 1, 1], [1, 1, 1, 1]]", "one list of numbers per model"),
        ("models: ['a1']\nsegment: -3", "'segment' must be a positive number"),
        ("models: ['a1'\n", "not a readable bag YAML"),
        ("- just a list", "must be a mapping"),
    ],
)
def test_bad_bag_yaml_is_one_line_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PackageFormatError, match=re.escape(words)) as err:
        load_model("bad", repo=tmp_path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
