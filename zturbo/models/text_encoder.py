"""Prompt → caption features, exactly as Z-Image's pipeline computes them.

The prompt is wrapped in Qwen3's chat template (thinking enabled, i.e. no think block), tokenized and
truncated to 512 tokens (template included), and the features are the hidden states of the second-to-last
decoder layer. Pads are dropped, so instead of padding every prompt to 512 we pad a batch only to its
longest prompt: with causal attention and right padding the real tokens' states are the same.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MAX_TOKENS = 512
PAD_TOKEN_ID = 151643  # <|endoftext|>


def chat_prompt(prompt: str) -> str:
    """Qwen3's chat template for one user turn with a generation prompt (enable_thinking=True)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


class PromptEncoder:
    """Tokenizer + Qwen3Model. `encode` returns one (tokens, hidden) tensor per prompt."""

    def __init__(self, model: nn.Module, tokenizer_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.model = model
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch([chat_prompt(p) for p in prompts], add_special_tokens=False)
        return [e.ids[:MAX_TOKENS] for e in encodings]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        ids = self.token_ids(prompts)
        longest = max(len(i) for i in ids)
        device = next(self.model.parameters()).device
        input_ids = torch.full((len(ids), longest), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.bool)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = True
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device) if not bool(mask.all()) else None,
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-2]
        return [hidden[row, : len(seq)] for row, seq in enumerate(ids)]
