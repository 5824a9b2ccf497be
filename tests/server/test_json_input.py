"""JSON a client sends can always be stored and sent back: lone surrogates, NaN, huge numbers and deep
nesting are a 400 naming the place (never a 500, never a poisoned `/settings`), on HTTP and WebSocket."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from server.conftest import LiveServer
from server.doubles import FakeExecutor, save_prompt
from server.test_ws import finished, recv, recv_until, submit
from zturbo.server import ServerConfig, create_app
from zturbo.server.json_input import MAX_DEPTH, loads, nesting_depth

LOCAL = "http://127.0.0.1:8188"
SURROGATE = '"\\ud800"'  # valid JSON, not encodable as UTF-8
BAD_VALUES = {
    "lone surrogate": SURROGATE,
    "low surrogate": '"a\\udc00b"',
    "surrogate key": '{"\\udfff": 1}',
    "NaN": "NaN",
    "Infinity": "-Infinity",
    "overflowing float": "1e999",
    "4300-digit number": "9" * 4300,
    "deep nesting": "[" * 5000 + "]" * 5000,
    "nesting past the limit": "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
}


def body_with(value: str, key: str = "k") -> bytes:
    return ('{"' + key + '": ' + value + "}").encode()


@pytest.mark.parametrize("name", BAD_VALUES)
def test_settings_refuse_what_cannot_be_read_back(
    client: TestClient, config: ServerConfig, name: str
) -> None:
    client.post("/settings", json={"Comfy.Good": "城市"})
    response = client.post("/settings", content=body_with(BAD_VALUES[name]))
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    response = client.post("/settings/Comfy.Bad", content=BAD_VALUES[name].encode())
    assert response.status_code == 400
    got = client.get("/settings")
    assert got.status_code == 200 and got.json() == {"Comfy.Good": "城市"}
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir)), base_url=LOCAL) as again:
        assert again.get("/api/settings").json() == {"Comfy.Good": "城市"}


def test_surrogate_message_names_the_place(client: TestClient) -> None:
    response = client.post("/settings", content=b'{"a": {"b": [1, "\\ud800"]}}')
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and '["a"]["b"][1]' in message and "surrogate" in message


def test_a_settings_file_spoiled_by_an_older_version_still_loads(
    client: TestClient, config: ServerConfig
) -> None:
    path = config.user_dir / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"good": 1, "bad": "\\ud800", "nan": NaN, "also": [2]}', encoding="utf-8")
    assert client.get("/settings").json() == {"good": 1, "also": [2]}
    assert client.post("/settings", json={"new": True}).status_code == 200
    assert client.get("/settings").json() == {"good": 1, "also": [2], "new": True}


def test_pairs_and_chinese_are_fine(client: TestClient) -> None:
    assert (
        client.post("/settings", content='{"emoji": "\\ud83d\\ude00", "zh": "雨后街道"}'.encode()).status_code
        == 200
    )
    assert client.get("/settings").json() == {"emoji": "😀", "zh": "雨后街道"}


JSON_ROUTES = [
    ("/prompt", '{"prompt": {"1": {"class_type": "SaveImage", "inputs": {"text": %s}}}}'),
    ("/prompt", '{"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}, "client_id": %s}'),
    ("/api/prompt", '{"prompt": %s}'),
    ("/queue", '{"delete": [%s]}'),
    ("/history", '{"delete": [%s]}'),
    ("/interrupt", '{"prompt_id": %s}'),
    ("/free", '{"unload_models": %s}'),
    ("/api/jobs/cancel", '{"job_ids": [%s]}'),
    ("/zturbo/presets", '{"name": %s, "template": "a {subject}"}'),
    ("/api/zturbo/presets", '{"name": "x", "template": %s}'),
    ("/zturbo/outputs/delete", '{"filename": %s}'),
    ("/zturbo/graph", '{"settings": {"prompt": %s}}'),
    ("/settings/x", "%s"),
]


@pytest.mark.parametrize(("path", "template"), JSON_ROUTES)
@pytest.mark.parametrize("name", ["lone surrogate", "NaN", "4300-digit number", "deep nesting"])
def test_no_json_route_answers_500(client: TestClient, path: str, template: str, name: str) -> None:
    response = client.post(path, content=(template % BAD_VALUES[name]).encode())
    assert response.status_code == 400, (path, name, response.status_code, response.text[:300])
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_loads_unit() -> None:
    assert loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert nesting_depth(b'{"a": "[[[[", "b": [[1]]}') == 3
    for value in BAD_VALUES.values():
        with pytest.raises(ValueError):
            loads(value)


def test_websocket_survives_hostile_frames(live: LiveServer) -> None:
    with connect(live.ws("tough")) as ws:
        recv(ws)
        for frame in [*BAD_VALUES.values(), "not json", '{"type": "feature_flags", "data": "\\ud800"}', ""]:
            ws.send(frame)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        prompt_id = submit(live, save_prompt(1), "tough")
        frames = recv_until(ws, finished(prompt_id))
        assert any(isinstance(f, dict) and f["type"] == "execution_success" for f in frames)


def raw(live: LiveServer, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection((live.host, live.port), timeout=timeout) as sock:
        sock.sendall(data)
        return sock.recv(4096)


@pytest.mark.parametrize("size", [9_000, 20_000, 60_000])
def test_websocket_upgrade_with_a_long_request_line_is_answered(live: LiveServer, size: int) -> None:
    request = (
        f"GET /ws?clientId={'a' * size} HTTP/1.1\r\nHost: {live.host}:{live.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    start = time.monotonic()
    answer = raw(live, request.encode())
    assert answer.split(b" ", 2)[1] in (b"400", b"414", b"431"), answer[:100]
    assert time.monotonic() - start < 5


def test_a_500_keeps_the_connection(live: LiveServer, monkeypatch) -> None:
    """The client reads a 500 and sends its next request on the same keep-alive connection."""

    def broken() -> dict:
        raise RuntimeError("registry bug /secret/path")

    monkeypatch.setattr(live.app.state.zturbo.registry, "object_info", broken)
    host = f"{live.host}:{live.port}"
    with socket.create_connection((live.host, live.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for path, status in (("/object_info", b"500"), ("/prompt", b"200"), ("/object_info", b"500")):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            line = reader.readline()
            assert line.split(b" ")[1] == status, line
            length = 0
            while (header := reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                assert not (name.lower() == b"connection" and b"close" in value.lower())
            body = reader.read(length)
            assert b"/secret/path" not in body  # the log has the details, the client does not


def test_token_never_reaches_the_access_log(capsys) -> None:
    from zturbo.server.uvicorn_setup import uvicorn_config

    uvicorn_config(FakeExecutor, "127.0.0.1", 0)  # any app: only the log set-up matters
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/ws?clientId=a&token=s3cret&x=1", "1.1", 101
    )
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws?token=s3cret"
    )
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "s3cret" not in text and "token=***" in text and "clientId=a" in text
