"""ZTurboSeedVariety: a MODEL patch like CFGNorm; the graph `generate` records runs to the same image."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from zturbo.checkpoints.layout import resolve_models
from zturbo.engine import Engine, ZImageModel
from zturbo.errors import InputError
from zturbo.generate import model_files, run_request
from zturbo.graph.run import run_workflow
from zturbo.nodes.context import ExecutionContext
from zturbo.nodes.custom_sampler import ZTurboSeedVariety
from zturbo.output.metadata import api_graph, request_from_api_graph
from zturbo.output.png import to_pil
from zturbo.request import GenerationRequest
from zturbo.runtime.settings import EngineSettings
from zturbo.sampling.variety import SeedVariety

REQUEST = GenerationRequest("a red fox", width=48, height=32, steps=3, seed=5, variety=0.8, variety_steps=0.5)


def test_the_node_patches_a_copy_and_zero_is_off(node_ctx):
    node_ctx.execution.engine = Engine(EngineSettings("cpu", "fp32"))
    model = ZImageModel(component=None)  # type: ignore[arg-type]
    (patched,) = ZTurboSeedVariety().execute(node_ctx, model, 0.4, 0.25)
    assert model.variety is None and patched.variety == SeedVariety(0.4, 0.25)
    (off,) = ZTurboSeedVariety().execute(node_ctx, patched, 0.0, 0.25)
    assert off == model
    with pytest.raises(InputError, match="steps fraction"):
        ZTurboSeedVariety().execute(node_ctx, model, 0.4, 0.0)


def test_the_recorded_graph_reproduces_the_image(tiny_models, tmp_path):
    engine = Engine(EngineSettings("cpu", "fp32"))
    paths = resolve_models(tiny_models)
    expected = np.asarray(to_pil(run_request(engine, paths, REQUEST).images[0]))
    plain = np.asarray(to_pil(run_request(engine, paths, replace(REQUEST, variety=0.0)).images[0]))
    assert not np.array_equal(plain, expected)  # so the graph's match below needs the node to act
    graph = api_graph(REQUEST, model_files(paths, tiny_models))
    assert graph["8"]["inputs"]["model"] == ["40", 0] and graph["40"]["class_type"] == "ZTurboSeedVariety"
    assert request_from_api_graph(graph) == replace(REQUEST, negative="")
    folders = {name: tmp_path / name for name in ("output", "input", "temp")}
    for folder in folders.values():
        folder.mkdir()
    context = ExecutionContext(
        models_dir=tiny_models, output_dir=folders["output"], input_dir=folders["input"],
        temp_dir=folders["temp"], engine=engine,
    )  # fmt: skip
    run_workflow(graph, context=context)
    (png,) = folders["output"].glob("*.png")
    with Image.open(png) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)
