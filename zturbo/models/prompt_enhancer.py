"""Prompt enhancement: the loaded Qwen3-4B text encoder, used as the causal LM it was trained as.

Z-Image's text encoder is the whole Qwen3-4B (every layer and the final norm; only the LM head is not
in the file, and Qwen3-4B ties it to the embedding: logits = norm(h) @ embed_tokens.weightᵀ). So a
short idea can be rewritten into a detailed description with no second model download.

- Chat template: Qwen3's own, rendered for [system, user] with a generation prompt and thinking off
  (`<think>\\n\\n</think>\\n\\n` after the assistant header, as `enable_thinking=False` renders it);
  the tests compare `chat_text` with the real template from the tokenizer's tokenizer_config.json.
- Sampling: Qwen3's recommended non-thinking settings (temperature 0.7, top-p 0.8, top-k 20) applied
  as transformers' warpers do (temperature, then top-k, then top-p), drawn from a seeded CPU
  `torch.Generator` on fp32 logits copied to the CPU, so the text for a seed does not depend on the
  device's random number generator. The draw covers the surviving candidates only (transformers'
  multinomial draws one exponential per vocabulary entry: 152k per token, ~20 ms on a CPU), so the
  same seed does not give transformers' tokens; the distribution is the same (tested). Temperature
  0 is greedy decoding.
- Length: `max_new_tokens` (default 300, at most `MAX_NEW_TOKENS_CAP`); decoding stops at
  <|im_end|> or <|endoftext|>.
- KV cache: transformers' `DynamicCache` through `Qwen3Model(past_key_values=..., use_cache=True)`:
  one prefill of the template, then one token per forward.
- Streaming: `on_token(text)` gets each new piece of text as soon as it decodes to whole characters.

Where it runs is the engine's choice (`Engine.enhance_prompt`): `prefill_device` and `decode_device`
here, so a streamed encoder prefills once through the GPU slots and decodes from its host copy.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from zturbo.errors import InputError
from zturbo.models import qwen3_decode

IM_END_ID = 151645  # <|im_end|>
ENDOFTEXT_ID = 151643  # <|endoftext|>
STOP_IDS = frozenset({IM_END_ID, ENDOFTEXT_ID})
DEFAULT_MAX_NEW_TOKENS = 300
MAX_NEW_TOKENS_CAP = 1024  # a description longer than this would be truncated by the encoder anyway
MAX_IDEA_CHARS = 4000
DEFAULT_SYSTEM_PROMPT = (
    "You write prompts for a text-to-image model. Rewrite the user's idea as one detailed visual "
    "description of a single image: the subject and what it is doing, its setting, composition and "
    "camera angle, lighting, colours, materials and textures, mood and style. Keep every element the "
    "user asked for and invent nothing that contradicts it; quote any text that must appear in the "
    "image exactly. Write in the same language as the user's idea. Answer with the description only: "
    "one paragraph of plain prose, no title, no preamble, no lists, under 200 words."
)
TokenFn = Callable[[str], None]


@dataclass(frozen=True)
class Sampling:
    """Qwen3's recommended settings for non-thinking chat; temperature 0: greedy."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20


GREEDY = Sampling(temperature=0.0)


def chat_text(idea: str, system: str | None = None) -> str:
    """Qwen3's chat template for [system, user], generation prompt added, thinking off."""
    system = DEFAULT_SYSTEM_PROMPT if system is None else system
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{idea}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def check_request(idea: str, max_new_tokens: int) -> None:
    """Refuse what cannot give a description, in one line naming the field."""
    if not idea.strip():
        raise InputError("enhance: the prompt is empty (nothing to enhance)")
    if len(idea) > MAX_IDEA_CHARS:
        raise InputError(f"enhance: the prompt is {len(idea)} characters; at most {MAX_IDEA_CHARS}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_CAP:
        raise InputError(f"enhance: max_tokens must be 1..{MAX_NEW_TOKENS_CAP}, got {max_new_tokens}")


def head_weight(model: nn.Module) -> Tensor:
    """The tied LM head: the input embedding matrix (vocab, hidden)."""
    weight = getattr(getattr(model, "embed_tokens", None), "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise InputError("enhance: this text encoder's embedding is not a plain matrix (quantized?)")
    return weight


def warped(logits: Tensor, sampling: Sampling) -> tuple[Tensor, Tensor]:
    """(candidate ids, their probabilities) after transformers' warpers in its order: temperature,
    top-k (ties with the k-th kept), top-p (the most likely token always kept). Worked on the
    top-k survivors only: a sort of the full 152k vocabulary per token costs more than the GPU's step."""
    scores = logits / sampling.temperature
    if 0 < sampling.top_k < scores.numel():
        kth = torch.topk(scores, sampling.top_k).values[-1]
        ids = torch.nonzero(scores >= kth).squeeze(1)
    else:
        ids = torch.arange(scores.numel())
    scores = scores[ids]
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False, stable=True)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - sampling.top_p
        drop[-1] = False
        keep = ~drop.scatter(0, order, drop)
        ids, scores = ids[keep], scores[keep]
    return ids, scores.softmax(-1)


def sample_token(logits: Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token id from (vocab,) fp32 CPU logits; temperature 0: the most likely one. The draw is
    torch.multinomial's own for one sample (argmax of p/q, q ~ Exp(1)) over the candidates only."""
    if sampling.temperature <= 0:
        return int(logits.argmax())
    ids, probs = warped(logits, sampling)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return int(ids[(probs / q).argmax()])


class TextStream:
    """Decodes the growing id list and hands out only new, complete text (a UTF-8 character split over
    two tokens decodes to U+FFFD until its second token arrives); the pieces joined are the answer
    (before the trailing whitespace is stripped)."""

    def __init__(self, tokenizer: Any, on_token: TokenFn | None) -> None:
        self.tokenizer, self.on_token = tokenizer, on_token
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        if self.on_token is not None and len(text) > len(self.sent):
            self.on_token(text[len(self.sent) :])
        self.sent = text

    def text(self) -> str:
        """The text so far, without leading whitespace (the answer's first token often has a space)."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def finish(self) -> str:
        text = self.text()
        if self.on_token is not None and text.startswith(self.sent) and len(text) > len(self.sent):
            self.on_token(text[len(self.sent) :])
        return text


@dataclass
class Decoding:
    """One generation's state between forwards: the KV cache and the logits of the next token."""

    cache: Any
    logits: Tensor  # (vocab,) fp32 on the CPU
    lean: qwen3_decode.StaticDecoder | None = None  # set by `decode` where the lean step applies


# cuDNN's attention builds a new execution plan for each new key length, i.e. for every decoded
# token: ~1 ms of CPU per layer (36 ms a token on an H200, where the GPU's work is 6 ms). The others
# take any length as it comes.
_DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_for(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernels decoding uses on `device` (CUDA: not cuDNN's; elsewhere torch's choice)."""
    return sdpa_kernel(_DECODE_BACKENDS) if device.type == "cuda" else contextlib.nullcontext()


def cache_to(cache: Any, device: torch.device) -> None:
    """Move a DynamicCache's keys and values (prefill on the GPU, decode on the CPU)."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys, layer.values = layer.keys.to(device), layer.values.to(device)
            layer.device = device


class PromptEnhancer:
    """Causal-LM decoding on a loaded `Qwen3Model` with its tied head; tokenizer: `tokenizers.Tokenizer`."""

    def __init__(self, model: nn.Module, tokenizer: Any, graphs: Callable[[Any], Any] | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.graphs = graphs  # CUDA-graph wrapper for the lean step (the engine's GraphCache), or None
        # transformers 5.x renamed Qwen3Model's `past_key_values` to `cache` (the old name warns)
        params = inspect.signature(type(model).forward).parameters
        self.cache_keyword = "cache" if "cache" in params else "past_key_values"

    def prompt_ids(self, idea: str, system: str | None = None) -> list[int]:
        return self.tokenizer.encode(chat_text(idea, system), add_special_tokens=False).ids

    @torch.no_grad()
    def forward(self, ids: Tensor, cache: Any, last_only: bool = True) -> Tensor:
        """Logits (B, L or 1, vocab) for `ids` after what `cache` holds (the cache grows by L)."""
        with attention_for(ids.device):
            out = self.model(input_ids=ids, use_cache=True, **{self.cache_keyword: cache})
        hidden = out.last_hidden_state  # already through the final norm
        hidden = hidden[:, -1:] if last_only else hidden
        return hidden @ head_weight(self.model).to(hidden.device).T

    def prefill(self, ids: list[int], device: torch.device) -> Decoding:
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self.forward(torch.tensor([ids], device=device), cache)
        return Decoding(cache, logits[0, -1].float().cpu())

    def step(self, state: Decoding, token: int, device: torch.device) -> None:
        """`token` appended; `state.logits` then the next token's. Through the lean step when the decode
        set one up (`qwen3_decode`: the model whole on `device`), else transformers' forward (a
        streamed model's hooks need it)."""
        if state.lean is None:
            logits = self.forward(torch.tensor([[token]], device=device), state.cache)
        else:
            with attention_for(device):
                logits = state.lean.step(token)[None, None]
        state.logits = logits[0, -1].float().cpu()

    def decode(
        self,
        state: Decoding,
        device: torch.device,
        *,
        seed: int,
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        on_token: TokenFn | None = None,
        stop: frozenset[int] = STOP_IDS,
    ) -> tuple[str, list[int]]:
        """Sample up to `max_new_tokens` after a prefill; (text, generated ids without the stop).
        `stop` empty: always `max_new_tokens` (the benchmark's fixed length on random weights)."""
        generator = torch.Generator("cpu").manual_seed(int(seed) % 2**64)
        stream = TextStream(self.tokenizer, on_token)
        cache_to(state.cache, device)
        if qwen3_decode.can_run(self.model, device):  # all of it on `device`: the lean step
            state.lean = qwen3_decode.StaticDecoder(
                self.model, state.cache, max_new_tokens, head_weight(self.model), self.graphs
            )
        for position in range(max_new_tokens):
            token = sample_token(state.logits, sampling, generator)
            if token in stop:
                break
            stream.push(token)
            if position + 1 < max_new_tokens:
                self.step(state, token, device)
        return stream.finish().strip(), stream.ids

    def generate(
        self,
        idea: str,
        *,
        seed: int = 0,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        system: str | None = None,
        sampling: Sampling = Sampling(),
        on_token: TokenFn | None = None,
        device: torch.device | None = None,
    ) -> str:
        """The enhanced prompt, prefilled and decoded on one device (the model's, by default)."""
        check_request(idea, max_new_tokens)
        device = device or next(self.model.parameters()).device
        state = self.prefill(self.prompt_ids(idea, system), device)
        text, _ = self.decode(
            state, device, seed=seed, max_new_tokens=max_new_tokens, sampling=sampling, on_token=on_token
        )
        return text
