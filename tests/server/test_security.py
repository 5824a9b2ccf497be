"""DNS rebinding (the Host check), cross-origin protection, the auth token, and the refusal to serve a
network address without one."""

from __future__ import annotations

import socket

import httpx
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
        {"origin": "http://127.0.0.1"},  # no port is port 80, not this server's 8188
        {"origin": "https://127.0.0.1"},
        {"origin": "http://localhost:8188"},
        {"origin": "file://"},
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
    assert cross_origin_reason({"host": "localhost", "origin": "http://localhost"}) is None  # both port 80
    assert cross_origin_reason({"host": "box.lan:8188", "origin": "http://box.lan:8188"}) is None
    assert cross_origin_reason({"host": "box.lan:8188", "origin": "http://other.lan"}) is not None
    # A reverse proxy that rewrites Host: the public name is vouched for by --allowed-host.
    proxied = {"host": "127.0.0.1:8188", "origin": "https://zturbo.example"}
    assert cross_origin_reason(proxied) is not None
    assert cross_origin_reason(proxied, ("zturbo.example",)) is None


REBINDING_HOSTS = [
    "evil.example:8188",
    "evil.example",
    "localhost.evil.example:8188",
    "127.0.0.1.nip.io:8188",
    "0x7f000001.evil:8188",
    "[::ffff:7f00:1].evil:8188",
    "localhost.:8188",
    "",
]
ROUTES = [
    ("GET", "/prompt"),
    ("GET", "/history"),
    ("GET", "/queue"),
    ("GET", "/view?filename=a.png"),
    ("GET", "/settings"),
    ("GET", "/api/settings"),
    ("GET", "/comfy/api/queue"),
    ("GET", "/"),
]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
def test_dns_rebinding_refused_on_every_route(client: TestClient, config: ServerConfig, host: str) -> None:
    """A page on evil.example, rebound to 127.0.0.1, is same-origin to itself: only Host gives it away."""
    (config.output_dir / "a.png").write_bytes(b"secret pixels")
    page = {"host": host, "origin": f"http://{host}"}
    for method, path in ROUTES:
        response = client.request(method, path, headers={"host": host})
        assert response.status_code == 403, (host, path, response.status_code)
        assert b"secret" not in response.content
    response = client.post("/prompt", json={"prompt": save_prompt()}, headers=page)
    assert response.status_code == 403 and "host" in response.json()["error"]
    assert client.post("/settings", json={"x": 1}, headers=page).status_code == 403
    assert client.get("/queue").json()["queue_pending"] == [] and client.get("/settings").json() == {}


@pytest.mark.parametrize("host", REBINDING_HOSTS[:4])
def test_dns_rebinding_refused_on_websocket(client: TestClient, host: str) -> None:
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/ws", headers={"host": host, "origin": f"http://{host}"}),
    ):
        pass


def raw_upgrade(live, host: str, target: str = "/ws?clientId=x") -> bytes:
    """A WebSocket handshake by hand (a client library would not send a foreign Host); the answer's head."""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((live.host, live.port), timeout=10) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096)


def test_dns_rebinding_refused_on_a_real_socket(live) -> None:
    """Over uvicorn: HTTP, and the WebSocket upgrade (403 instead of 101)."""
    host = f"evil.example:{live.port}"
    assert httpx.get(f"{live.http}/history", headers={"host": host}, timeout=10).status_code == 403
    assert raw_upgrade(live, host).startswith(b"HTTP/1.1 403")
    assert raw_upgrade(live, f"127.0.0.1:{live.port}").startswith(b"HTTP/1.1 101")


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8188", "127.0.0.2:8188", "localhost:8188", "[::1]:8188", "app.localhost"]
)
def test_loopback_hosts_served(client: TestClient, host: str) -> None:
    assert client.get("/prompt", headers={"host": host}).status_code == 200


def test_allowed_hosts_and_listen_address(config: ServerConfig) -> None:
    assert not config.host_allowed("box.lan")
    config.allowed_hosts = ("box.lan",)
    assert config.host_allowed("box.lan") and not config.host_allowed("evil.example")
    config.host, config.allowed_hosts = "192.168.1.20", ()
    assert config.host_allowed("192.168.1.20") and not config.host_allowed("192.168.1.21")
    config.host = "0.0.0.0"  # every address: any IP literal (no name can be rebound to an IP literal)
    assert config.host_allowed("10.1.2.3") and config.host_allowed("fe80::1")
    assert not config.host_allowed("box.lan") and not config.host_allowed("evil.example")
    config.allowed_hosts = ("*",)
    assert config.host_allowed("anything.example")
    assert ServerConfig(output_dir=config.output_dir, allowed_hosts=(" Box.LAN ",)).allowed_hosts == (
        "box.lan",
    )


def test_allowed_host_is_served(config: ServerConfig) -> None:
    config.allowed_hosts = ("zturbo.lan",)
    app = create_app(config, executor=FakeExecutor(config.output_dir))
    with TestClient(app, base_url="http://zturbo.lan:8188") as client:
        assert client.get("/prompt").status_code == 200
        assert client.get("/prompt", headers={"host": "evil.example"}).status_code == 403


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
    with TestClient(
        create_app(config, executor=FakeExecutor(config.output_dir)), base_url="http://127.0.0.1:8188"
    ) as test_client:
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
    with pytest.raises(WebSocketDisconnect), token_client.websocket_connect("/ws", headers=LOCAL):
        pass
    with token_client.websocket_connect("/ws?token=s3cret-token", headers=LOCAL) as ws:
        assert ws.receive_json()["type"] == "status"
    bearer = {**LOCAL, "authorization": "Bearer s3cret-token"}
    with token_client.websocket_connect("/ws", headers=bearer) as ws:
        assert ws.receive_json()["type"] == "status"
