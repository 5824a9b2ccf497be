"""`Engine.enhance_prompt` on the tiny models' text encoder (real file, real tokenizer): deterministic
per seed, the same text whether the encoder is resident or streamed, and a streamed encoder copies
its layers through the device slots once for the prefill and never per generated token."""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.detect import TEXT_ENCODER
from zturbo.checkpoints.layout import COMFY_FILES
from zturbo.engine import Engine
from zturbo.errors import InputError
from zturbo.runtime import residency
from zturbo.runtime.memory import MemoryPlan
from zturbo.runtime.settings import EngineSettings

STREAMED = MemoryPlan(level="dit-streamed", text_encoder="streamed", dit="streamed", dit_resident_blocks=2)
IDEA = "a lighthouse at dusk, 灯塔"


def loaded(models, plan: MemoryPlan | None = None):
    engine = Engine(EngineSettings("cpu", "fp32", plan=plan))
    return engine, engine.load_text_encoder(models / COMFY_FILES[TEXT_ENCODER])


def test_deterministic_per_seed(tiny_models):
    engine, clip = loaded(tiny_models)
    first = engine.enhance_prompt(clip, IDEA, seed=11, max_tokens=16)
    assert engine.enhance_prompt(clip, IDEA, seed=11, max_tokens=16) == first
    assert engine.enhance_prompt(clip, IDEA, seed=12, max_tokens=16) != first
    assert engine.enhance_prompt(clip, IDEA, seed=11, max_tokens=16, system="Answer in one word.") != first


def test_streamed_encoder_decodes_on_host_without_streaming_per_token(tiny_models):
    _, resident = loaded(tiny_models)
    engine, clip = loaded(tiny_models, STREAMED)
    streamer = residency.streamer_of(clip.component.module)
    assert streamer is not None
    copies: list[int] = []
    original = streamer._copy

    def counted(block: int, slot: int) -> None:
        copies.append(block)
        original(block, slot)

    streamer._copy = counted  # type: ignore[method-assign]
    before = engine.encode_text(clip, IDEA).embeds[0]
    copies.clear()
    pieces: list[str] = []
    text = engine.enhance_prompt(clip, IDEA, seed=5, max_tokens=20, on_token=pieces.append)
    layers = len(clip.component.module.layers)
    # One prefill pass (plus the streamer's prefetch of layer 0 for a next pass); per token, 19 tokens
    # would have copied 57 layers more.
    assert copies == [*range(layers), 0]
    assert "".join(pieces).rstrip() == text
    assert text == Engine(EngineSettings("cpu", "fp32")).enhance_prompt(resident, IDEA, seed=5, max_tokens=20)
    # the hooks are back: encoding still streams, with the same result
    copies.clear()
    assert torch.equal(engine.encode_text(clip, IDEA).embeds[0], before)
    assert copies == [*range(layers), 0]


def test_bad_request_is_one_line(tiny_models):
    engine, clip = loaded(tiny_models)
    with pytest.raises(InputError, match="max_tokens must be 1..1024"):
        engine.enhance_prompt(clip, IDEA, max_tokens=2000)
