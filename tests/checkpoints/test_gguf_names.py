"""llama.cpp Qwen3 names <-> Hugging Face Qwen3Model names."""

from __future__ import annotations

import gguf
import pytest
import torch
import transformers

from zturbo.checkpoints.gguf import hf_to_llama_cpp_qwen3, llama_cpp_qwen3_to_hf


def tiny_qwen3_names() -> list[str]:
    config = transformers.Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    with torch.device("meta"):
        model = transformers.Qwen3Model(config)
    return list(model.state_dict())


def test_every_qwen3model_key_round_trips() -> None:
    names = tiny_qwen3_names()
    assert len(names) == 2 + 3 * 11
    for name in names:
        assert llama_cpp_qwen3_to_hf(hf_to_llama_cpp_qwen3(name)) == name


def test_map_agrees_with_gguf_packages_tensor_map() -> None:
    """gguf-py's own HF->GGUF table (used by llama.cpp's converter) must give the same names."""
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, 3)
    for name in tiny_qwen3_names():
        llama = table.get_name(f"model.{name}", try_suffixes=(".weight", ".bias"))
        assert llama == hf_to_llama_cpp_qwen3(name)
        assert llama_cpp_qwen3_to_hf(llama) == name


def test_known_examples_and_lm_head() -> None:
    assert llama_cpp_qwen3_to_hf("token_embd.weight") == "embed_tokens.weight"
    assert llama_cpp_qwen3_to_hf("blk.35.attn_k_norm.weight") == "layers.35.self_attn.k_norm.weight"
    assert llama_cpp_qwen3_to_hf("blk.0.ffn_norm.weight") == "layers.0.post_attention_layernorm.weight"
    assert llama_cpp_qwen3_to_hf("output.weight") == "lm_head.weight"


@pytest.mark.parametrize(
    "name", ["blk.0.attn_qkv.weight", "rope_freqs.weight", "output_norm", "blk.x.attn_q.weight"]
)
def test_unknown_names_raise(name: str) -> None:
    with pytest.raises(ValueError, match="llama.cpp Qwen3"):
        llama_cpp_qwen3_to_hf(name)
