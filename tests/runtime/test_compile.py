"""Speed modes: options, torch.compile of the block function, CUDA graphs, and the engine end to end.

Compiled vs eager (fp32, CPU inductor): relative error ≤ 1e-5 (fp32 noise; measured ~4e-7). The
engine with zturbo's DiT must give the diffusers-class path's latents within 1e-5 and its images
within 1/255.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from zturbo.checkpoints.detect import DIT
from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine
from zturbo.errors import InputError
from zturbo.generate import run_request
from zturbo.models.zimage_dit import ZImageDiT, call_block
from zturbo.request import GenerationRequest
from zturbo.runtime.compile import GraphedDiT, SpeedOptions, accelerate
from zturbo.runtime.settings import EngineSettings
from zturbo.testing.synthetic import TINY_DIT, build_random_dit


def reference_dit(seed: int = 3) -> torch.nn.Module:
    model, state_dict = build_random_dit(TINY_DIT, seed=seed)
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


def inputs(batch: int, size: tuple[int, int], lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, t = torch.randn(batch, 16, *size, generator=gen), torch.rand(batch, generator=gen)
    return x, t, [torch.randn(n, TINY_DIT.cap_feat_dim, generator=gen) for n in lengths]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_speed_options_are_validated():
    with pytest.raises(InputError, match="speed must be one of reference, eager, compile, max"):
        SpeedOptions("turbo")
    with pytest.raises(InputError, match="compile mode must be one of"):
        SpeedOptions("compile", compile_mode="reduce-overhead")
    assert SpeedOptions("max").graphs and not SpeedOptions("compile").graphs
    assert SpeedOptions().mode == "eager"


def test_reference_mode_keeps_the_diffusers_module():
    module = reference_dit()
    assert accelerate(module, SpeedOptions("reference")) is module


def test_graphs_are_cuda_only():
    dit = accelerate(reference_dit(), SpeedOptions("eager", cuda_graphs=True))
    assert isinstance(dit, ZImageDiT)  # CPU weights: no graph wrapper


def test_offload_hooks_keep_the_reference():
    module = reference_dit()
    module.layers[0].register_forward_pre_hook(lambda *_: None)
    assert accelerate(module, SpeedOptions("eager")) is module


def _inductor_works(tmp_path) -> str | None:
    try:
        torch.compile(lambda a: a * 2 + 1, dynamic=False)(torch.ones(3))
    except Exception as exc:  # no C++ compiler, unsupported platform...
        return f"torch.compile does not work on this machine: {exc}"
    return None


@pytest.fixture
def compile_cache(request, monkeypatch):
    """Inductor's cache in pytest's cache folder (warm across runs); the env change is undone after."""
    folder = request.config.cache.mkdir("zturbo-inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    if (reason := _inductor_works(folder)) is not None:
        pytest.skip(reason)
    return folder


def test_compiled_blocks_match_eager(compile_cache):
    dit = accelerate(reference_dit(), SpeedOptions("eager"))
    for lengths in ([20, 20], [20, 45]):  # no mask, then the mask path
        x, t, captions = inputs(2, (16, 12), lengths)
        with torch.no_grad():
            eager = dit(x, t, captions)
            compiled = accelerate(dit, SpeedOptions("compile", cache_dir=compile_cache))
            assert compiled is dit and dit.run_block is not call_block
            got = compiled(x, t, captions)
            dit.run_block = call_block
        assert rel_error(got, eager) <= 1e-5


@pytest.fixture(scope="module")
def engines():

    return Engine(EngineSettings("cpu", "fp32", speed="reference")), Engine(
        EngineSettings("cpu", "fp32", speed="eager")
    )


@pytest.mark.parametrize(
    ("cfg", "negative", "batch"),
    [(1.0, "", 1), (1.0, "", 2), (2.5, "blurry, low quality, 模糊", 2)],  # the last one runs the mask path
)
def test_engine_with_zturbo_dit_equals_diffusers_class(engines, tiny_models_fp32, cfg, negative, batch):
    paths = resolve_models(tiny_models_fp32)
    request = GenerationRequest(
        "a lighthouse at dusk, 灯塔",
        negative=negative,
        width=96,
        height=64,
        steps=4,
        cfg=cfg,
        sampler="euler",
        scheduler="simple",
        seed=7,
        batch=batch,
    )
    reference, fast = (run_request(engine, paths, request) for engine in engines)
    assert isinstance(engines[0].load_dit(paths.dit).transformer, ZImageTransformer2DModel)
    assert isinstance(engines[1].load_dit(paths.dit).transformer, ZImageDiT)
    assert rel_error(fast.latents, reference.latents) <= 1e-5
    assert (fast.images - reference.images).abs().max() <= 1 / 255


@pytest.mark.gpu
def test_cuda_graph_replays_match_eager_on_gpu():
    dit = accelerate(reference_dit().to("cuda"), SpeedOptions("eager"))
    graphed = accelerate(dit, SpeedOptions("eager", cuda_graphs=True))
    assert isinstance(graphed, GraphedDiT)
    for seed in (0, 1):  # fresh inputs through the same captured graph
        x, t, captions = inputs(1, (16, 16), [20], seed=seed)
        x, t, captions = x.cuda(), t.cuda(), [c.cuda() for c in captions]
        with torch.no_grad():
            assert rel_error(graphed(x, t, captions), dit(x, t, captions)) <= 1e-5


def test_a_graphed_dit_can_be_placed_resident():
    """`zturbo generate --speed max` registers the GraphedDiT with the memory manager (a GPU run found
    this broken: the wrapper has no blocks of its own)."""
    from zturbo.runtime import residency
    from zturbo.runtime.memory import MemoryPlan

    dit = accelerate(reference_dit(), SpeedOptions("eager"))
    graphed = GraphedDiT(dit)
    assert residency.dit_blocks(graphed) == dit.blocks()
    residency.place_dit(graphed, MemoryPlan().residence(DIT), torch.device("cpu"))


def test_compile_modes_run_eagerly_without_triton(monkeypatch, caplog):
    """Windows installs of PyTorch have no Triton: compile/max must not fail every job there."""
    from zturbo.runtime import compile as compile_module

    monkeypatch.setattr(compile_module, "has_triton", lambda: False)
    monkeypatch.setattr(compile_module, "_WARNED_NO_TRITON", False)
    assert compile_module.compiler_available(torch.device("cpu"))  # CPU code needs no Triton
    with caplog.at_level("WARNING"):
        assert not compile_module.compiler_available(torch.device("cuda"))
        assert not compile_module.compiler_available(torch.device("cuda"))
    assert caplog.text.count("triton-windows") == 1
