"""Glue between the workflow graph and the engine: one place builds the execution context.

Both `zturbo run` and `zturbo serve` use `make_context`, so a workflow sees the same engine, folders and
device choices whichever front end started it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from zturbo.checkpoints.layout import default_models_dir
from zturbo.engine import Engine
from zturbo.errors import GenerationError, Interrupted
from zturbo.nodes.context import ExecutionContext
from zturbo.nodes.engine_api import EngineAPI
from zturbo.runtime.settings import EngineSettings


def make_context(
    settings: EngineSettings,
    *,
    models_dir: Path | None,
    output_dir: Path,
    input_dir: Path,
    temp_dir: Path | None = None,
) -> ExecutionContext:
    """The folders and an engine configured by `settings`."""
    return ExecutionContext(
        models_dir=models_dir or default_models_dir(),
        output_dir=output_dir,
        input_dir=input_dir,
        temp_dir=temp_dir or output_dir.parent / "temp",
        engine=node_engine(settings),
    )


def node_engine(settings: EngineSettings) -> EngineAPI:
    """The engine nodes call; typed as their protocol, so the type checker holds `Engine` to it."""
    return Engine(settings)


def run_workflow_cli(
    workflow: Path,
    sets: list[str],
    settings: EngineSettings,
    *,
    models_dir: Path | None,
    out: Path,
    input_dir: Path,
    console: Console,
) -> list[Path]:
    """Run a workflow, showing each node by type (`running KSampler (#3)`) and a bar with rate and ETA
    for each sampling node (plain lines, no `\\r`, when stderr is a log); return the images written."""
    from zturbo.cli_progress import Display, WorkflowDisplay
    from zturbo.graph.formats import load_workflow_file
    from zturbo.graph.run import run_workflow
    from zturbo.nodes.registry import default_registry

    context = make_context(settings, models_dir=models_dir, output_dir=out, input_dir=input_dir)
    registry = default_registry(context)
    prompt, _ = load_workflow_file(workflow, registry)  # read again by run_workflow: only for the node types
    node_types = {str(node_id): str(node.get("class_type", "")) for node_id, node in prompt.items()}
    with Display(console) as display:
        result = run_workflow(
            workflow,
            sets=sets,
            context=context,
            on_event=WorkflowDisplay(display, node_types),
            registry=registry,
        )
    if result.interrupted:
        raise Interrupted("the workflow was interrupted")
    if result.status_str != "success":
        error = result.error or {}
        raise GenerationError(
            f"node {error.get('node_id')} ({error.get('node_type')}) failed: {error.get('exception_message')}"
        )
    return [
        out / image.get("subfolder", "") / image["filename"]
        for output in result.outputs.values()
        for image in output.get("images", [])
        if image.get("type", "output") == "output"
    ]
