"""ZTurboPromptEnhance in a graph: CLIPLoader → enhance → PreviewAny, on the tiny models."""

from __future__ import annotations

from zturbo.checkpoints.detect import TEXT_ENCODER
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.engine import Engine
from zturbo.graph.run import run_workflow
from zturbo.nodes.conditioning import ENHANCE_EVENT
from zturbo.nodes.context import ExecutionContext
from zturbo.nodes.registry import default_registry
from zturbo.runtime.settings import EngineSettings

IDEA = "a glass teapot on a windowsill"


def graph(seed: int, system: str = "") -> dict:
    return {
        "1": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"},
        },
        "2": {
            "class_type": "ZTurboPromptEnhance",
            "inputs": {"clip": ["1", 0], "text": IDEA, "seed": seed, "max_tokens": 12, "system": system},
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }


def test_enhance_node_in_a_graph(tiny_models, tmp_path):
    engine = Engine(EngineSettings("cpu", "fp32"))
    context = ExecutionContext(
        tiny_models, tmp_path / "out", tmp_path / "in", tmp_path / "tmp", engine=engine
    )
    events: list[tuple[str, dict]] = []
    result = run_workflow(graph(4), context=context, on_event=lambda e, d: events.append((e, d)))
    clip = engine.load_text_encoder(tiny_models / COMFY_FILES[TEXT_ENCODER])
    expected = engine.enhance_prompt(clip, IDEA, seed=4, max_tokens=12)
    assert result.outputs["2"]["text"] == [expected] and result.outputs["3"]["text"] == [expected]
    pieces = [d["text"] for e, d in events if e == ENHANCE_EVENT]
    assert "".join(pieces).rstrip() == expected and all(
        d["node"] == "2" for e, d in events if e == ENHANCE_EVENT
    )
    assert any(e == "progress" and d["node"] == "2" for e, d in events)
    other = run_workflow(graph(5), context=context)
    assert other.outputs["2"]["text"] != [expected]
    own = run_workflow(graph(4, "Describe it as a haiku."), context=context)
    assert own.outputs["2"]["text"] == [
        engine.enhance_prompt(clip, IDEA, seed=4, max_tokens=12, system="Describe it as a haiku.")
    ]


def test_schema_is_listed():
    info = default_registry().object_info_for("ZTurboPromptEnhance")
    assert info["category"] == "zturbo/text" and info["output"] == ["STRING"] and info["output_node"]
    assert set(info["input"]["required"]) == {"clip", "text", "seed", "max_tokens"}
    assert set(info["input"]["optional"]) == {"system"}
