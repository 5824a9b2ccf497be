"""Prompt → caption features, exactly as Z-Image's pipeline computes them.

The prompt is wrapped in Qwen3's chat template (thinking enabled, i.e. no think block), tokenized and
truncated to 512 tokens (template included), and the features are the hidden states of the second-to-last
decoder layer. Pads are dropped, so instead of padding every prompt to 512 we pad a batch only to its
longest prompt: with causal attention and right padding the real tokens' states are the same.

On CUDA the forward can run through CUDA graphs (the engine sets `graphs` to a
`runtime.graphs.GraphCache` of `features` outside the reference mode): the encoder is ~60 ms of Python
and kernel launches for ~9 ms of GPU work. Token ids are then right-padded to a multiple of
`GRAPH_BUCKET` so a handful of graphs serve every prompt length; causal attention keeps the real
tokens' states independent of the pads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

MAX_TOKENS = 512
PAD_TOKEN_ID = 151643  # <|endoftext|>
GRAPH_BUCKET = 64  # tokens: at most 8 captured graphs up to MAX_TOKENS


def chat_prompt(prompt: str) -> str:
    """Qwen3's chat template for one user turn with a generation prompt (enable_thinking=True)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def padded_ids(ids: list[list[int]], multiple: int = 1) -> tuple[Tensor, Tensor]:
    """(input ids right-padded to the longest prompt, rounded up to `multiple`; mask of real tokens)."""
    longest = max(len(i) for i in ids)
    width = -(-longest // multiple) * multiple
    input_ids = torch.full((len(ids), width), PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    return input_ids, mask


class PromptEncoder:
    """Tokenizer + Qwen3Model. `encode` returns one (tokens, hidden) tensor per prompt."""

    def __init__(self, model: nn.Module, tokenizer_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.model = model
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # A replaying wrapper of `features` (input ids -> hidden states), used while the whole encoder
        # is resident on CUDA; None: always run `features` directly.
        self.graphs: Callable[[Tensor], Tensor] | None = None

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch([chat_prompt(p) for p in prompts], add_special_tokens=False)
        return [e.ids[:MAX_TOKENS] for e in encodings]

    def features(self, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """Hidden states of the second-to-last layer, (B, L, hidden), for every position."""
        out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        return out.hidden_states[-2]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[Tensor]:
        ids = self.token_ids(prompts)
        device = next(self.model.parameters()).device
        if self._graphs_apply(device):
            input_ids, _ = padded_ids(ids, GRAPH_BUCKET)
            hidden = self.graphs(input_ids.to(device))  # type: ignore[misc]
        else:
            input_ids, mask = padded_ids(ids)
            hidden = self.features(input_ids.to(device), mask.to(device) if not bool(mask.all()) else None)
        return [hidden[row, : len(seq)] for row, seq in enumerate(ids)]

    def _graphs_apply(self, device: torch.device) -> bool:
        """Graphs need the whole encoder resident on CUDA: a streamed one keeps its layers in RAM between
        prompts and moves them through GPU slots per layer. (Hooks say nothing: transformers installs
        hooks of its own on the first forward, to record hidden states.)"""
        return (
            self.graphs is not None
            and device.type == "cuda"
            and all(p.is_cuda for p in self.model.parameters())
        )
