"""`POST /zturbo/enhance` on the real engine (tiny models): a queued CLIPLoader → ZTurboPromptEnhance
job whose text streams to the asking client as `zturbo_enhance` events; bad bodies are a 400."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from server.test_creator_routes import real, real_config  # noqa: F401 (fixtures)
from zturbo.checkpoints.detect import TEXT_ENCODER
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.engine import Engine
from zturbo.runtime.settings import EngineSettings

IDEA = "a paper boat on a puddle, 纸船"


def expected(models, seed: int, tokens: int) -> str:
    engine = Engine(EngineSettings("cpu", "fp32"))
    clip = engine.load_text_encoder(models / COMFY_FILES[TEXT_ENCODER])
    return engine.enhance_prompt(clip, IDEA, seed=seed, max_tokens=tokens)


def events_until_done(ws, prompt_id: str) -> list[dict]:
    seen = []
    while True:
        message = json.loads(ws.receive_text())
        seen.append(message)
        data = message.get("data") or {}
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return seen


def test_enhance_streams_and_answers(real: TestClient, real_config) -> None:  # noqa: F811
    with real.websocket_connect("ws://127.0.0.1:8188/ws?clientId=page") as ws:
        body = {"prompt": IDEA, "seed": 6, "max_tokens": 14, "client_id": "page"}
        answer = real.post("/zturbo/enhance", json=body)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        seen = events_until_done(ws, result["prompt_id"])
    assert result["prompt"] == expected(real_config.models_dir, 6, 14) and result["seed"] == 6
    pieces = [m["data"]["text"] for m in seen if m["type"] == "zturbo_enhance"]
    assert "".join(pieces).rstrip() == result["prompt"]
    again = real.post("/zturbo/enhance", json={**body, "client_id": None}).json()
    assert again["prompt"] == result["prompt"]


def test_bad_bodies_are_refused_before_queueing(real: TestClient) -> None:  # noqa: F811
    cases = (
        ({"prompt": ""}, 422, "body.prompt"),
        ({"prompt": "x", "max_tokens": 0}, 422, "body.max_tokens"),
        ({"prompt": "   "}, 400, "the prompt is empty"),
    )
    for body, status, message in cases:
        answer = real.post("/zturbo/enhance", json=body)
        assert answer.status_code == status and message in answer.json()["error"]["message"], answer.text
    assert real.get("/history").json() == {}
