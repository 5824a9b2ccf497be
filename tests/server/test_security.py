"""Cross-origin protection, the auth token, and the refusal to serve a network address without one."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server.doubles import FakeExecutor, save_prompt
from zturbo.errors import InputError
from zturbo.server import ServerConfig, create_app, serve
from zturbo.server.config import is_loopback_host
from zturbo.server.security import cross_origin_reason

LOCAL = {"host": "127.0.0.1:8188"}


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://evil.example:8188"},
        {"origin": "http://127.0.0.1:9999"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "http://127.0.0.1:8188", "sec-fetch-site": "cross-site"},
    ],
)
def test_cross_origin_refused(client: TestClient, headers: dict) -> None:
    assert client.get("/prompt", headers=headers).status_code == 403
    response = client.post("/prompt", json={"prompt": save_prompt()}, headers=headers)
    assert response.status_code == 403
    assert client.get("/queue").json()["queue_pending"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"origin": "http://127.0.0.1:8188"},
        {"origin": "http://127.0.0.1"},  # a browser that drops the port
        {"origin": "http://127.0.0.1:8188", "sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
    ],
)
def test_same_origin_allowed(client: TestClient, headers: dict) -> None:
    assert client.post("/prompt", json={"prompt": save_prompt()}, headers=headers).status_code == 200


def test_origin_rules_by_host() -> None:
    assert cross_origin_reason({"host": "localhost:8188", "origin": "http://localhost:8188"}) is None
    assert cross_origin_reason({"host": "[::1]:8188", "origin": "http://[::1]:8188"}) is None
    assert cross_origin_reason({"host": "localhost:8188", "origin": "http://127.0.0.1:8188"}) is not None
    # Like ComfyUI, a non-loopback Host is left to the auth token.
    assert cross_origin_reason({"host": "box.lan:8188", "origin": "http://other.lan"}) is None


def test_websocket_cross_origin_refused(client: TestClient) -> None:
    evil = {**LOCAL, "origin": "http://evil.example"}
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers=evil):
        pass
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws", headers={"sec-fetch-site": "cross-site"}),
    ):
        pass
    with client.websocket_connect("/ws", headers={**LOCAL, "origin": "http://127.0.0.1:8188"}) as ws:
        assert ws.receive_json()["type"] == "status"


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST", "app.localhost"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "192.168.1.2", "example.com", "", None, "localhost.example.com"):
        assert not is_loopback_host(host), host


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_non_loopback_without_token_refused(config: ServerConfig, host: str) -> None:
    config.host = host
    with pytest.raises(InputError, match="auth-token"):
        create_app(config, executor=FakeExecutor(config.output_dir))
    with pytest.raises(InputError, match="auth-token"):
        serve(config, executor=FakeExecutor(config.output_dir))


@pytest.fixture
def token_client(config: ServerConfig):
    config.host, config.auth_token = "0.0.0.0", "s3cret-token"
    with TestClient(create_app(config, executor=FakeExecutor(config.output_dir))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "path", ["/prompt", "/api/queue", "/history", "/object_info", "/view?filename=a.png"]
)
def test_token_required_everywhere(token_client: TestClient, path: str) -> None:
    assert token_client.get(path).status_code == 401
    assert token_client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
    good = token_client.get(path, headers={"authorization": "Bearer s3cret-token"}).status_code
    assert good in (200, 404)
    sep = "&" if "?" in path else "?"
    assert token_client.get(f"{path}{sep}token=s3cret-token").status_code == good


def test_token_required_for_post_and_websocket(token_client: TestClient) -> None:
    assert token_client.post("/prompt", json={"prompt": save_prompt()}).status_code == 401
    with pytest.raises(WebSocketDisconnect), token_client.websocket_connect("/ws"):
        pass
    with token_client.websocket_connect("/ws?token=s3cret-token") as ws:
        assert ws.receive_json()["type"] == "status"
    with token_client.websocket_connect("/ws", headers={"authorization": "Bearer s3cret-token"}) as ws:
        assert ws.receive_json()["type"] == "status"
