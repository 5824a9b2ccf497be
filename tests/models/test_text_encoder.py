"""Text features equal transformers' Qwen3Model hidden_states[-2] on the real tokenizer's ids."""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.layout import tokenizer_dir
from zturbo.checkpoints.load import load_text_encoder
from zturbo.models.text_encoder import MAX_TOKENS, PromptEncoder

PROMPTS = [
    "a red fox in the snow, photo",
    "一只在雪地里的红狐狸，摄影作品",
    'poster with the text "ZTURBO" ' + "very detailed " * 300,  # longer than 512 tokens: truncated
]


@pytest.fixture(scope="module")
def reference(tiny_diffusers):
    from transformers import AutoTokenizer, Qwen3Model

    tokenizer = AutoTokenizer.from_pretrained(tiny_diffusers / "tokenizer")
    model = Qwen3Model.from_pretrained(tiny_diffusers / "text_encoder", dtype=torch.float32).eval()
    return tokenizer, model


def reference_features(tokenizer, model, prompts):
    """diffusers ZImagePipeline._encode_prompt, step by step."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        for p in prompts
    ]
    inputs = tokenizer(texts, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    mask = inputs.attention_mask.bool()
    with torch.no_grad():
        hidden = model(
            input_ids=inputs.input_ids, attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
    return [hidden[i][mask[i]] for i in range(len(prompts))], inputs.input_ids, mask


def test_token_ids_match_chat_template(reference, tiny_models_fp32):
    tokenizer, _ = reference
    encoder = PromptEncoder(torch.nn.Identity(), tokenizer_dir(None))
    _, ref_ids, mask = reference_features(tokenizer, reference[1], PROMPTS)
    ours = encoder.token_ids(PROMPTS)
    for i, ids in enumerate(ours):
        assert ids == ref_ids[i][mask[i]].tolist()
    assert len(ours[2]) == MAX_TOKENS


def test_features_equal_transformers_hidden_states(reference, tiny_models_fp32):
    tokenizer, model = reference
    expected, _, _ = reference_features(tokenizer, model, PROMPTS)
    component = load_text_encoder(
        tiny_models_fp32 / "text_encoders" / "qwen_3_4b.safetensors", dtype=torch.float32
    )
    encoder = PromptEncoder(component.module, tokenizer_dir(None))
    batched = encoder.encode(PROMPTS)
    single = [encoder.encode([p])[0] for p in PROMPTS]
    for ours_b, ours_s, ref in zip(batched, single, expected, strict=False):
        assert ours_b.shape == ref.shape
        for ours in (ours_b, ours_s):
            rel = (ours - ref).norm() / ref.norm()
            assert rel < 1e-5, rel
