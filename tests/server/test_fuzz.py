"""Fuzzing a real `serve` process (test-double executor): hypothesis-generated requests on every route
(JSON with lone surrogates, NaN, huge numbers, deep nesting; raw bytes; path-like names; uploads;
foreign Hosts), raw-socket garbage and WebSocket frames. No answer may be a 5xx or take over 10 s, the
server must stay up, a valid prompt must still run, and its memory must stay flat.

CI runs ~2,300 requests (derandomized); `ZTURBO_FUZZ_SCALE=10` multiplies them (RELIABILITY.md).
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from websockets.sync.client import connect

from server.doubles import NODE_CLASSES, save_prompt
from server.procs import ServerProcess, double_args
from zturbo.server.app import ROUTERS

SCALE = float(os.environ.get("ZTURBO_FUZZ_SCALE", "1"))
SLOW_S = 10.0
# Starts a real model download in the background: nothing to fuzz here, and no network.
SKIPPED = {("POST", "/zturbo/models/download")}
ROUTES = sorted(
    (method, route.path)
    for router in ROUTERS
    for route in router.routes
    if isinstance(route, APIRoute)
    for method in route.methods
    if (method, route.path) not in SKIPPED
)
STATS = {"requests": 0, "by_status": {}, "slowest": 0.0}

NASTY = [
    "\ud800",
    "a\udfffb",
    "城市夜景，霓虹灯",
    "../../etc/passwd",
    "..%2f..%2fsecret",
    "%252e%252e%252f",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "\\\\server\\share",
    ".zturbo",
    ".zturbo/zturbo.sqlite3",
    "zturbo.sqlite3",
    "a" * 300,
    "nul\x00byte",
    "x.png [output]",
    "../ [temp]",
    "",
    " ",
    "1e999",
    "-1",
    "9" * 30,
]
KEYS = [
    "prompt", "client_id", "prompt_id", "extra_data", "number", "front", "partial_execution_targets",
    "delete", "clear", "job_ids", "name", "template", "negative", "width", "height", "filename",
    "subfolder", "settings", "unload_models", "free_memory", "filename_prefix", "type", "overwrite",
]  # fmt: skip
PARAMS = [
    "filename", "type", "subfolder", "preview", "channel", "max_items", "offset", "dir", "recurse",
    "full_info", "overwrite", "status", "sort_by", "sort_order", "limit", "workflow_id", "clientId",
]  # fmt: skip

texts = st.one_of(st.text(max_size=40), st.sampled_from(NASTY))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(texts, st.sampled_from(KEYS)), children, max_size=4),
    ),
    max_leaves=12,
)
nodes = st.fixed_dictionaries(
    {
        "class_type": st.one_of(st.sampled_from(NODE_CLASSES), texts),
        "inputs": st.dictionaries(texts, json_values, max_size=3),
    }
)
prompts = st.dictionaries(st.one_of(st.sampled_from(["1", "9"]), texts), nodes, max_size=4)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5),
    st.fixed_dictionaries(
        {"prompt": st.one_of(prompts, json_values)}, optional={"client_id": texts, "front": json_values}
    ),
    json_values,
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [b"[" * 5000, b'{"a": ' + b"9" * 5000 + b"}", b'{"k": NaN}', b'{"k": "\\ud800"}', b"\xed\xa0\x80"]
    ),
)
hosts = st.one_of(
    st.just("127.0.0.1"), st.just("localhost"), st.sampled_from(["evil.example", "127.0.0.1.nip.io"])
)
content_types = st.sampled_from(
    ["application/json", "", "text/plain", "application/x-www-form-urlencoded", "image/png"]
)


def quote_any(text: str) -> str:
    """Percent-encoding of any string, lone surrogates included (as the bytes a sloppy client sends)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def fill(path: str, draw) -> str:
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        value = draw(
            st.one_of(texts, st.sampled_from(["a.json", "workflows%2Fa.json", "x", "diffusion_models"]))
        )
        path = path[:start] + (quote_any(value) or "x") + path[end + 1 :]
    return path


def with_query(path: str, params: dict[str, str]) -> str:
    return path + (
        "?" + "&".join(f"{quote_any(k)}={quote_any(v)}" for k, v in params.items()) if params else ""
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    process = ServerProcess(double_args(root / "srv"), root / "server.log").start()
    process.root = root / "srv"  # type: ignore[attr-defined]
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, timeout=30) as client:
        yield client


def send(http: httpx.Client, method: str, path: str, host: str = "127.0.0.1", **kwargs) -> httpx.Response:
    headers = {
        "host": host if host != "127.0.0.1" else http.base_url.netloc.decode(),
        **kwargs.pop("headers", {}),
    }
    start = time.monotonic()
    response = http.request(method, path, headers=headers, **kwargs)
    elapsed = time.monotonic() - start
    STATS["requests"] += 1
    STATS["by_status"][response.status_code] = STATS["by_status"].get(response.status_code, 0) + 1
    STATS["slowest"] = max(STATS["slowest"], elapsed)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:300])
    assert elapsed < SLOW_S, (method, path, elapsed)
    if host not in ("127.0.0.1", "localhost"):
        assert response.status_code == 403, (method, path, host, response.status_code)
    return response


def examples(n: int) -> settings:
    return settings(
        max_examples=int(n * SCALE),
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def test_warm_up_and_memory_baseline(server: ServerProcess, http: httpx.Client) -> None:
    for _ in range(50):
        send(http, "POST", "/prompt", json={"prompt": save_prompt(0)})
        send(http, "GET", "/history", params={"max_items": 5})
    server.rss_start = server.rss()  # type: ignore[attr-defined]


@examples(1400)
@given(data=st.data())
def test_json_on_every_route(http: httpx.Client, data) -> None:
    method, template = data.draw(st.sampled_from(ROUTES))
    path = data.draw(st.sampled_from(["", "/api"])) + fill(template, data.draw)
    params = data.draw(st.dictionaries(st.sampled_from(PARAMS), texts, max_size=3))
    host = data.draw(hosts)
    if method in ("POST", "PUT", "PATCH"):
        if data.draw(st.booleans()):
            content = json.dumps(data.draw(bodies)).encode("utf-8", "surrogatepass")
        else:
            content = data.draw(raw_bodies)
        headers = {"content-type": data.draw(content_types)}
        send(http, method, with_query(path, params), host, content=content, headers=headers)
    else:
        send(http, method, with_query(path, params), host)


def png_bytes(size: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size)).save(buf, format="PNG")
    return buf.getvalue()


@examples(500)
@given(data=st.data())
def test_uploads(http: httpx.Client, data) -> None:
    path = data.draw(
        st.sampled_from(["/upload/image", "/api/upload/image", "/upload/mask", "/zturbo/inspect"])
    )
    name = data.draw(st.one_of(texts, st.just("ok.png")))
    content = data.draw(
        st.one_of(
            st.just(png_bytes()),
            st.binary(max_size=300),
            st.just(
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00N \x00\x00N \x08\x00\x00\x00\x00" + b"\x00" * 30
            ),
        )
    )
    form = data.draw(
        st.dictionaries(
            st.sampled_from(["type", "subfolder", "overwrite", "original_ref"]),
            st.one_of(texts, st.just('{"filename": "ok.png", "type": "input"}')),
            max_size=4,
        )
    )
    field = "file" if path.endswith("inspect") else "image"
    try:
        files = {field: (name, content, "image/png")}
        send(http, "POST", path, files=files, data=form)
    except UnicodeEncodeError:  # httpx cannot put a lone surrogate in a multipart header itself
        pass


@examples(200)
@given(
    path=st.one_of(st.sampled_from([p for _, p in ROUTES]), texts),
    method=st.sampled_from(["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
)
def test_odd_methods(http: httpx.Client, path: str, method: str) -> None:
    send(http, method, "/" + quote_any(path.lstrip("/")).replace("%2F", "/"))


RAW = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
    b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{",
    b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /view?filename=%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
]


def test_raw_socket_garbage(server: ServerProcess, http: httpx.Client) -> None:
    for data in RAW * int(5 * SCALE):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            try:
                answer = sock.recv(64)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert not answer.startswith(b"HTTP/1.1 5"), (data[:40], answer)
    send(http, "GET", "/prompt")


@examples(150)
@given(
    frames=st.lists(
        st.one_of(st.text(max_size=50), st.binary(max_size=50), st.builds(json.dumps, json_values)),
        max_size=8,
    )
)
def test_websocket_frames(server: ServerProcess, frames: list) -> None:
    with connect(server.ws("fuzzer"), open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
        for frame in frames:
            ws.send(frame)
        ws.send(json.dumps({"type": "feature_flags", "data": {}}))
        ws.ping().wait(10)


def test_still_serving_and_memory_flat(server: ServerProcess, http: httpx.Client) -> None:
    prompt_id = send(http, "POST", "/prompt", json={"prompt": save_prompt(1)}).json()["prompt_id"]
    deadline = time.monotonic() + 30
    while not send(http, "GET", f"/history/{prompt_id}").json():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.alive()
    grown = server.rss() - server.rss_start  # type: ignore[attr-defined]
    report = {**STATS, "rss_mib": round(server.rss() / 2**20), "grown_mib": round(grown / 2**20, 1)}
    Path(server.root.parent / "fuzz-report.json").write_text(json.dumps(report, default=str))  # type: ignore[attr-defined]
    print("fuzz:", report)
    assert STATS["requests"] >= 2000 * min(SCALE, 1) or SCALE < 1
    assert grown < 60 * 2**20, report
