"""Text features equal transformers' Qwen3Model hidden_states[-2] on the real tokenizer's ids."""

from __future__ import annotations

import pytest
import torch

from zturbo.checkpoints.layout import tokenizer_dir
from zturbo.checkpoints.load import load_text_encoder
from zturbo.models.text_encoder import GRAPH_BUCKET, MAX_TOKENS, PromptEncoder, padded_ids
from zturbo.runtime.graphs import GraphCache

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


def test_graph_bucket_padding_leaves_real_tokens_unchanged(tiny_models_fp32):
    """The CUDA-graph path pads ids to a bucket without a mask: causal attention must make that exact."""
    component = load_text_encoder(
        tiny_models_fp32 / "text_encoders" / "qwen_3_4b.safetensors", dtype=torch.float32
    )
    encoder = PromptEncoder(component.module, tokenizer_dir(None))
    ids = encoder.token_ids(PROMPTS[:2])
    exact = encoder.encode(PROMPTS[:2])
    padded, _ = padded_ids(ids, GRAPH_BUCKET)
    assert padded.shape[1] % GRAPH_BUCKET == 0 and padded.shape[1] > max(len(i) for i in ids)
    with torch.no_grad():
        hidden = encoder.features(padded)
    for row, seq in enumerate(ids):
        ours = hidden[row, : len(seq)]
        assert ((ours - exact[row]).norm() / exact[row].norm()) < 1e-5


def graphed(module: torch.nn.Module) -> PromptEncoder:
    """An encoder set up as the engine sets it up outside the reference mode."""
    encoder = PromptEncoder(module, tokenizer_dir(None))
    encoder.graphs = GraphCache(encoder.features, "text encoder")
    return encoder


def test_graphs_are_not_used_off_cuda(tiny_models_fp32):
    component = load_text_encoder(
        tiny_models_fp32 / "text_encoders" / "qwen_3_4b.safetensors", dtype=torch.float32
    )
    encoder = graphed(component.module)
    encoder.encode(PROMPTS[:1])
    assert encoder.graphs is not None and encoder.graphs.buckets() == (0, 0)


@pytest.mark.gpu
def test_graphed_encoder_matches_eager_on_gpu(tiny_models_fp32):
    component = load_text_encoder(
        tiny_models_fp32 / "text_encoders" / "qwen_3_4b.safetensors", dtype=torch.float32, device="cuda"
    )
    eager = PromptEncoder(component.module, tokenizer_dir(None))
    replayed = graphed(component.module)
    for prompts in (PROMPTS[:1], PROMPTS[1:2], PROMPTS[:1]):  # the third replays the first bucket
        for ours, ref in zip(replayed.encode(prompts), eager.encode(prompts), strict=True):
            assert ours.shape == ref.shape
            assert ((ours - ref).norm() / ref.norm()) < 1e-5
    assert replayed.graphs.buckets()[0] >= 1 and replayed.graphs.buckets()[1] == 0
    # Every call replayed a graph. (transformers installs hooks on the first forward to record hidden
    # states; a hook-based "is it streamed?" check once sent every later call down the eager path.)
    assert replayed.graphs.replays == 3
