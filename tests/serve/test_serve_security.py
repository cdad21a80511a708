"""Other sites cannot act through a visitor's browser: state-changing requests from a foreign
or opaque (``null``) origin are refused, nothing may frame the page, every response forbids
sniffing and referrers, the page may load nothing from elsewhere; the API documentation needs
the token like the API; a server on the network refuses short tokens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the [serve] extra")

from demucs_rr.cli import main
from demucs_rr.serve.security import SECURITY_HEADERS
from tests.helpers.serve import make_client, make_package, write_song

LOCAL = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("models") / "frac.safetensors")


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return write_song(tmp_path_factory.mktemp("songs") / "song.wav")


@pytest.fixture
def client(package, tmp_path):
    with make_client(package, tmp_path / "jobs", workers=0, allowed_hosts=LOCAL) as test_client:
        test_client.base_url = test_client.base_url.copy_with(host="127.0.0.1")
        yield test_client


def post_song(client, song: Path, headers: dict[str, str]):
    return client.post("/api/jobs", files={"file": ("a.wav", song.read_bytes())}, headers=headers)


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"Origin": "null"}, "requests from an opaque origin (null) are refused"),
        ({"Origin": "http://evil.example"}, "cross-origin requests are refused"),
        ({"Origin": "http://127.0.0.1:9"}, "cross-origin requests are refused"),  # another port
        ({"Origin": "file://127.0.0.1"}, "cross-origin requests are refused"),
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site requests are refused"),
        ({"Sec-Fetch-Site": "same-site"}, "cross-site requests are refused"),
    ],
)
def test_state_changing_requests_from_elsewhere_are_refused(client, song, headers, detail):
    response = post_song(client, song, headers)
    assert response.status_code == 403 and response.json() == {"detail": detail}
    mine = post_song(client, song, {})
    assert mine.status_code == 201
    response = client.delete(mine.json()["url"], headers=headers)
    assert response.status_code == 403 and response.json() == {"detail": detail}
    assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == [mine.json()["id"]]


def test_the_page_itself_may_change_things(client, song):
    page = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}  # Host: 127.0.0.1
    created = post_song(client, song, page)
    assert created.status_code == 201
    assert client.delete(created.json()["url"], headers=page).status_code == 204


@pytest.mark.parametrize(
    "path", ["/", "/api/info", "/api/jobs", "/static/app.js", "/docs", "/nope"]
)
def test_every_response_forbids_framing_sniffing_and_referrers(client, path):
    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, (path, name)
    policy = dict(
        p.strip().split(" ", 1) for p in response.headers["content-security-policy"].split(";")
    )
    assert policy["frame-ancestors"] == "'none'" and response.headers["x-frame-options"] == "DENY"
    assert policy["script-src"] == "'self'" and policy["default-src"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_script_or_style():
    static = Path(__file__).resolve().parents[2] / "demucs_rr" / "serve" / "static"
    for page in ("index.html", "docs.html"):
        text = (static / page).read_text()
        assert "<script>" not in text and "<style" not in text and " style=" not in text
        assert re.search(r"\son[a-z]+=", text) is None  # no onclick= and the like


def test_api_documentation_needs_the_token(package, tmp_path):
    token = "a-long-enough-token-0123"
    with make_client(package, tmp_path / "jobs", workers=0, token=token) as client:
        for path in ("/docs", "/openapi.json", "/api/info"):
            assert client.get(path).status_code == 401, path
            bearer = {"Authorization": f"Bearer {token}"}
            assert client.get(path, headers=bearer).status_code == 200, path
        assert client.get("/").status_code == 200  # the page asks for the token itself


def test_a_server_on_the_network_refuses_short_tokens(capsys, tmp_path):
    argv = ["serve", "--host", "0.0.0.0", "--jobs-dir", str(tmp_path), "-n", "no_such_model"]
    argv += ["--token", "short-15-chars!"]  # refused before anything else is looked at
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: the access token is 15 characters long: a server on the network needs at least "
        "16 (python -c 'import secrets; print(secrets.token_hex())')\n"
    )
