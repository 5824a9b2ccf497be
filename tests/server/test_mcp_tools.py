"""MCP with the official SDK's client: a real session over each transport.

- streamable HTTP: `/mcp` on the served app (real uvicorn, real engine on tiny models), token and
  origin rules as for every route;
- stdio: `python -m zturbo mcp` as an agent starts it; its job lands in the data directory's
  history, which a server on the same folders then lists in /history and the gallery.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.conftest import LiveServer, history_entry_for, in_gallery
from zturbo.server import ServerConfig, create_app

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

TOOLS = {"generate_image", "enhance_prompt", "list_models"}


async def exercise(session: ClientSession) -> dict:
    """What an agent does: list tools, list models, make an image, try the enhancer."""
    await session.initialize()
    names = {tool.name for tool in (await session.list_tools()).tools}
    models = json.loads((await session.call_tool("list_models", {})).content[0].text)
    result = await session.call_tool(
        "generate_image", {"prompt": "a paper crane, 纸鹤", "width": 48, "height": 32, "steps": 2, "seed": 9}
    )
    enhance = await session.call_tool("enhance_prompt", {"prompt": "a cat", "seed": 3, "max_tokens": 8})
    again = await session.call_tool("enhance_prompt", {"prompt": "a cat", "seed": 3, "max_tokens": 8})
    bad_enhance = await session.call_tool("enhance_prompt", {"prompt": "a cat", "max_tokens": 5000})
    bad = await session.call_tool("generate_image", {"prompt": "x", "width": 50})
    return {
        "names": names, "models": models, "result": result, "bad": bad,
        "enhance": enhance, "again": again, "bad_enhance": bad_enhance,
    }  # fmt: skip


def check(outcome: dict) -> bytes:
    assert outcome["names"] == TOOLS
    assert outcome["models"]["in_use"]["diffusion_model"] in outcome["models"]["files"]["diffusion_models"]
    result = outcome["result"]
    assert not result.is_error
    image, text = result.content
    assert image.type == "image" and image.mime_type == "image/png"
    png = base64.b64decode(image.data)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (48, 32)
    assert "seed 9" in text.text
    enhance = outcome["enhance"]
    # A queued CLIPLoader → ZTurboPromptEnhance job on the server's text encoder: deterministic per seed.
    assert not enhance.is_error and enhance.content[0].text.strip()
    assert outcome["again"].content[0].text == enhance.content[0].text
    bad_enhance = outcome["bad_enhance"]
    assert bad_enhance.is_error and "enhance_prompt.max_tokens" in bad_enhance.content[0].text
    assert outcome["bad"].is_error and "width must be a multiple of 16" in outcome["bad"].content[0].text
    return png


def saved_name(text: str) -> str:
    return text.rsplit(" as ", 1)[1].split("/")[-1]


def test_streamable_http_session(real_live: LiveServer):
    async def run() -> dict:
        url = f"{real_live.http}/mcp"
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            return await exercise(session)

    outcome = anyio.run(run)
    png = check(outcome)
    filename = saved_name(outcome["result"].content[1].text)
    _, entry = history_entry_for(real_live, filename)
    assert entry["prompt"][3]["zturbo_client"] == "mcp"
    image = {"filename": filename, "subfolder": "", "type": "output"}
    assert httpx.get(f"{real_live.http}/view", params=image, timeout=30).content == png
    assert in_gallery(real_live, filename)


def test_http_endpoint_keeps_token_and_origin_rules(config, executor):
    config.auth_token = "s3cret"
    with TestClient(create_app(config, executor=executor), base_url="http://127.0.0.1:8188") as test_client:
        hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        assert test_client.post("/mcp", json=hello).status_code == 401
        cross = test_client.post(
            "/mcp", json=hello, headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}
        )
        assert cross.status_code == 403


@pytest.mark.slow  # a fresh Python process imports torch and loads the models: 7-19 s on 2 shared cores
def test_stdio_session(tiny_models: Path, tmp_path: Path):
    folders = ["--output-dir", str(tmp_path / "out"), "--input-dir", str(tmp_path / "in")]
    args = ["-m", "zturbo", "mcp", "--models-dir", str(tiny_models), "--device", "cpu", *folders]
    args += ["--data-dir", str(tmp_path / "state")]
    server = StdioServerParameters(command=sys.executable, args=args)

    async def run() -> dict:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            return await exercise(session)

    outcome = anyio.run(run)
    check(outcome)
    filename = saved_name(outcome["result"].content[1].text)
    config = ServerConfig(
        models_dir=tiny_models,
        output_dir=tmp_path / "out",
        input_dir=tmp_path / "in",
        data_dir=tmp_path / "state",
    )
    from server.doubles import FakeExecutor

    with TestClient(
        create_app(config, executor=FakeExecutor(config.output_dir)), base_url="http://127.0.0.1"
    ) as c:
        entries = c.get("/history").json()
        assert any(
            i.get("filename") == filename
            for e in entries.values()
            for o in e["outputs"].values()
            for i in o["images"]
        )
        items = c.get("/zturbo/gallery").json()["items"]
        assert any(item["image"]["filename"] == filename for item in items)
