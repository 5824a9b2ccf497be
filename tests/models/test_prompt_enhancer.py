"""The prompt enhancer against transformers: Qwen3's real chat template, `Qwen3ForCausalLM` with tied
embeddings on the same tiny weights (full 151936-token vocabulary, so the real tokenizer's ids are all
valid), greedy and sampled decoding; and determinism per seed with the real tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer

from zturbo.checkpoints.layout import tokenizer_dir
from zturbo.errors import InputError
from zturbo.models.prompt_enhancer import (
    DEFAULT_SYSTEM_PROMPT,
    GREEDY,
    STOP_IDS,
    PromptEnhancer,
    Sampling,
    chat_text,
    sample_token,
    warped,
)
from zturbo.testing.synthetic import TINY_TEXT_ENCODER, build_random_text_encoder

IDEAS = ["a red fox in the snow", "一只在雪地里的红狐狸", "ein Fuchs, «Schnee» & <Licht>\nzweite Zeile"]
U = torch.finfo(torch.float32).eps / 2  # unit roundoff of fp32


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir(None) / "tokenizer.json"))


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    assert TINY_TEXT_ENCODER.vocab_size == 151936  # covers every id of the real tokenizer
    return build_random_text_encoder(TINY_TEXT_ENCODER, seed=5)[1]


@pytest.fixture(scope="module")
def enhancer(weights, tokenizer) -> PromptEnhancer:
    from transformers import Qwen3Model

    model = Qwen3Model(TINY_TEXT_ENCODER.to_transformers()).eval().requires_grad_(False)
    model.load_state_dict(weights)
    return PromptEnhancer(model, tokenizer)


@pytest.fixture(scope="module")
def causal_lm(weights):
    from transformers import Qwen3ForCausalLM

    config = TINY_TEXT_ENCODER.to_transformers()
    config.tie_word_embeddings = True
    lm = Qwen3ForCausalLM(config).eval()
    missing, unexpected = lm.load_state_dict({"model." + k: v for k, v in weights.items()}, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied: the embedding matrix
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    return lm


@pytest.mark.parametrize("system", [None, "Be brief.", ""])
@pytest.mark.parametrize("idea", IDEAS)
def test_chat_text_is_qwen3_template_without_thinking(idea, system):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir(None)))
    turns = [{"role": "user", "content": idea}]
    used = DEFAULT_SYSTEM_PROMPT if system is None else system
    if used:  # an empty system prompt means no system turn
        turns.insert(0, {"role": "system", "content": used})
    real = hf.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert chat_text(idea, system) == real
    assert real.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def head_bound(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Both sides multiply the same fp32 hidden states by the same head; only the order of the
    n-term sums may differ (GEMM shapes differ). Each result is within γ_n·Σ|h_i w_i| of the exact
    product (Higham, γ_n = nu/(1-nu)), so the two within twice that."""
    n = hidden.shape[-1]
    gamma = n * U / (1 - n * U)
    return 2 * gamma * (hidden.abs() @ weight.abs().T)


def test_prefill_logits_match_causal_lm(enhancer, causal_lm):
    from transformers import DynamicCache

    ids = torch.tensor([enhancer.prompt_ids(IDEAS[1])])
    with torch.no_grad():
        ours = enhancer.forward(ids, DynamicCache(), last_only=False)[0]
        theirs = causal_lm(input_ids=ids, output_hidden_states=True)
    hidden = theirs.hidden_states[-1][0]  # after the final norm: the same module, same ops, same bits
    bound = head_bound(hidden, causal_lm.lm_head.weight)
    assert ours.shape == theirs.logits[0].shape == (ids.shape[1], 151936)
    assert bool(((ours - theirs.logits[0]).abs() <= bound).all())
    assert float(ours.std()) > 0.1  # not a degenerate model: the comparison means something


def our_path(enhancer: PromptEnhancer, idea: str, n: int, sampling: Sampling, seed: int = 0):
    """Generated ids plus the smallest top-1/top-2 logit margin met on the way."""
    margins: list[float] = []
    state = enhancer.prefill(enhancer.prompt_ids(idea), torch.device("cpu"))
    original = enhancer.step

    def step(state_, token, device):
        top2 = state_.logits.topk(2).values
        margins.append(float(top2[0] - top2[1]))
        original(state_, token, device)

    enhancer.step = step  # type: ignore[method-assign]
    try:
        _, ids = enhancer.decode(state, torch.device("cpu"), seed=seed, max_new_tokens=n, sampling=sampling)
    finally:
        del enhancer.step
    return ids, margins


def hf_generate(causal_lm, enhancer: PromptEnhancer, idea: str, n: int, **kwargs) -> list[int]:
    ids = torch.tensor([enhancer.prompt_ids(idea)])
    out = causal_lm.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        eos_token_id=sorted(STOP_IDS),
        pad_token_id=min(STOP_IDS),
        **kwargs,
    )
    return [t for t in out[0, ids.shape[1] :].tolist() if t not in STOP_IDS]


def any_position_bound(model) -> float:
    """`head_bound` for every position at once: the final RMSNorm's output has ‖h‖₂ ≤ max|γ|·√n
    (its normalized input has RMS ≤ 1), so Σ|h_i w_i| ≤ max|γ|·√n·max_v ‖W_v‖₂ (Cauchy-Schwarz)."""
    n = model.config.hidden_size
    gamma = n * U / (1 - n * U)
    norm = float(model.norm.weight.abs().max()) * n**0.5
    return 2 * gamma * norm * float(model.embed_tokens.weight.norm(dim=1).max())


def test_greedy_ids_match_causal_lm_generate(enhancer, causal_lm):
    n = 24
    ours, margins = our_path(enhancer, IDEAS[0], n, GREEDY)
    # Every step's top-1/top-2 margin is far above what the head's rounding can move a logit (and
    # above the few ulps by which transformers' masked-attention prefill may differ from ours):
    # the same argmax on any CPU, so equal ids are not luck at a near-tie.
    bound = any_position_bound(enhancer.model)
    assert bound < 1e-4 and min(margins) > 10 * bound
    assert ours == hf_generate(causal_lm, enhancer, IDEAS[0], n, do_sample=False)
    assert len(ours) == n


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(1.3, 0.95, 50), Sampling(0.7, 1.0, 0)])
def test_sampling_distribution_is_transformers_warpers(enhancer, sampling):
    """Our candidates and probabilities are those of transformers' Temperature → TopK → TopP warpers
    (then softmax) on the same logits: the same support exactly, the same probabilities to a few ulps
    (a softmax over the candidates vs over the full vector where the others are exp(-inf) = 0: the
    same terms, summed in another order)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = enhancer.prefill(enhancer.prompt_ids(IDEAS[1]), torch.device("cpu")).logits
    ids, probs = warped(logits, sampling)
    scores = TemperatureLogitsWarper(sampling.temperature)(None, logits[None].clone())
    if sampling.top_k:
        scores = TopKLogitsWarper(sampling.top_k)(None, scores)
    scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    theirs = scores[0].softmax(-1)
    assert torch.equal(torch.nonzero(theirs).squeeze(1), ids)
    torch.testing.assert_close(probs, theirs[ids], rtol=1e-6, atol=0)
    assert len(ids) > 1  # a real choice, so the draw below is tested


def test_draws_follow_the_distribution(enhancer):
    """Many seeded draws from one distribution: frequencies within 5 standard errors of p."""
    logits = enhancer.prefill(enhancer.prompt_ids(IDEAS[0]), torch.device("cpu")).logits
    ids, probs = warped(logits, Sampling())
    generator, n = torch.Generator().manual_seed(0), 2000
    counts = torch.zeros(len(ids))
    position = {int(t): i for i, t in enumerate(ids)}
    for _ in range(n):
        counts[position[sample_token(logits, Sampling(), generator)]] += 1
    error = (probs * (1 - probs) / n).sqrt()
    assert bool(((counts / n - probs).abs() <= 5 * error + 1e-9).all())


def test_deterministic_per_seed_with_real_tokenizer(enhancer):
    texts = {s: enhancer.generate(IDEAS[1], seed=s, max_new_tokens=16) for s in (7, 8)}
    assert enhancer.generate(IDEAS[1], seed=7, max_new_tokens=16) == texts[7]
    assert texts[7] != texts[8]
    assert all(t.strip() for t in texts.values())


def test_streamed_pieces_make_the_text_and_length_is_bounded(enhancer, tokenizer):
    pieces: list[str] = []
    text = enhancer.generate(IDEAS[0], seed=3, max_new_tokens=12, on_token=pieces.append)
    assert len(pieces) >= 2 and "".join(pieces).rstrip() == text
    assert "\ufffd" not in "".join(pieces)
    assert (
        len(tokenizer.encode(text, add_special_tokens=False).ids) <= 12 + 2
    )  # re-tokenizing may merge/split


@pytest.mark.parametrize(
    ("idea", "tokens", "message"),
    [("  ", 10, "prompt is empty"), ("x", 0, "max_tokens must be"), ("x", 5000, "max_tokens must be")],
)
def test_bad_requests_name_the_field(enhancer, idea, tokens, message):
    with pytest.raises(InputError, match=message):
        enhancer.generate(idea, max_new_tokens=tokens)


def test_lean_step_matches_transformers_forward(enhancer):
    """The lean decode step (zturbo.models.qwen3_decode: the layers called directly, a static KV
    cache, grouped-query SDPA without a mask) against transformers' forward on a copy of the same
    prefill cache, 8 tokens. Same weights and operations; what differs is summation order (SDPA over
    repeated vs grouped heads, masked vs unmasked): fp32 rounding, ~n·u ≈ 8e-6 relative per reduction
    of length n ≤ 64 (the tiny encoder's widths), a few per layer over 3 layers, far under the bound
    1e-4 × max|logit|; a wrong rotary position or cache slot moves logits by O(1) of that scale."""
    import copy

    cpu = torch.device("cpu")
    ids = enhancer.prompt_ids(IDEAS[0])
    lean, reference = enhancer.prefill(ids, cpu), enhancer.prefill(ids, cpu)
    from zturbo.models import qwen3_decode

    assert qwen3_decode.can_run(enhancer.model, cpu)
    lean.lean = qwen3_decode.StaticDecoder(
        enhancer.model, copy.deepcopy(lean.cache), 8, enhancer.model.embed_tokens.weight
    )
    for token in (1000, 2000, 3000, 151643, 42, 7, 99, 123):
        enhancer.step(lean, token, cpu)
        enhancer.step(reference, token, cpu)
        scale = float(reference.logits.abs().max())
        assert float((lean.logits - reference.logits).abs().max()) <= 1e-4 * scale
    assert lean.lean.length == len(ids) + 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_replays_the_lean_step_exactly(enhancer):
    """On CUDA the lean step runs as one captured graph (runtime.graphs.GraphCache, as the engine passes
    it): a replay launches the very kernels of the uncaptured step on the same buffers, so 16 greedy
    tokens and every logit are bit-equal."""
    from zturbo.runtime.graphs import GraphCache

    gpu = torch.device("cuda")
    model = enhancer.model.to(gpu)
    try:
        runs = []
        for graphs in (lambda step: GraphCache(step, "decode step"), None):
            other = PromptEnhancer(model, enhancer.tokenizer, graphs)
            logits: list[torch.Tensor] = []
            original = other.step

            def step(state, token, device, original=original, logits=logits):
                original(state, token, device)
                logits.append(state.logits)

            other.step = step  # type: ignore[method-assign]
            state = other.prefill(other.prompt_ids(IDEAS[0]), gpu)
            _, ids = other.decode(state, gpu, seed=0, max_new_tokens=16, sampling=GREEDY, stop=frozenset())
            assert state.lean is not None
            runs.append((ids, torch.stack(logits)))
        assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    finally:
        enhancer.model.to("cpu")
