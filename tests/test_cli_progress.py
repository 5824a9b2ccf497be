"""What the CLI shows while it works: phases, then a step bar with rate and ETA from the first step,
one plain line at a time in a log; `zturbo run` names nodes by type (issue 12, defect 5)."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

import zturbo.cli_progress
from zturbo.cli import app
from zturbo.cli_progress import Display, WorkflowDisplay

runner = CliRunner()


def log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_a_log_gets_plain_lines_with_rate_and_eta():
    console, buffer = log_console()
    with Display(console) as display:
        display.phase("loading models")
        display.start_steps("sampling", 20)
        for step in range(1, 21):
            display.step(step, 20)
        display.phase("decoding")
    text = buffer.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[:2] == ["loading models…", "sampling: 20 steps"]
    steps = [line for line in lines if line.startswith("sampling: step")]
    assert 2 <= len(steps) <= 11 and steps[-1].startswith("sampling: step 20/20")
    assert "it/s" in steps[0] and "ETA" in steps[0] and lines[-1] == "decoding…"


def test_a_terminal_bar_shows_rate_and_eta():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    with Display(console) as display:
        display.start_steps("sampling", 4)
        display.step(1, 4)
        display._bar.refresh()
        text = buffer.getvalue()
    assert "1/4" in text and "it/s" in text and "ETA" in text


def test_generate_shows_the_bar_only_while_sampling(tiny_models, tmp_path, monkeypatch):
    events: list[str] = []

    class Recorder(Display):
        def phase(self, text):
            events.append(text)
            super().phase(text)

        def start_steps(self, label, total, started=None):
            events.append(f"start {label} {total}")
            super().start_steps(label, total, started)

        def step(self, value, total, _preview=None):
            events.append(f"step {value}")
            super().step(value, total)

    monkeypatch.setattr(zturbo.cli_progress, "Display", Recorder)
    args = ["generate", "cat", "--width", "32", "--height", "32", "--seed", "1", "--device", "cpu"]
    args += ["--models-dir", str(tiny_models), "--out", str(tmp_path)]
    bad = runner.invoke(app, [*args, "--steps", "0"])
    assert "steps must be between 1 and 1000" in str(bad.exception) and events == []  # no bar for an error
    result = runner.invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert events == [
        "loading models",
        "encoding the prompt",
        "start sampling 2",
        "step 1",
        "step 2",
        "decoding",
        "saving",
    ]


def test_workflow_events_name_node_types():
    console, buffer = log_console()
    show = WorkflowDisplay(Display(console), {"3": "KSampler", "8": "VAEDecode"})
    show("executing", {"node": "3", "display_node": "3"})
    for value in (1, 2):
        show("progress", {"node": "3", "value": value, "max": 2})
    show("executing", {"node": "8", "display_node": "8"})
    show("executing", {"node": None})
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "running KSampler (#3)…" and lines[1] == "KSampler (#3): 2 steps"
    assert lines[-2].startswith("KSampler (#3): step 2/2") and lines[-1] == "running VAEDecode (#8)…"
    assert "\r" not in buffer.getvalue()


def test_run_finds_the_shipped_template_by_name_and_names_node_types(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no image_z_image_turbo.json here
    sets = ["EmptySD3LatentImage.width=32", "EmptySD3LatentImage.height=32", "KSampler.steps=2"]
    args = ["run", "image_z_image_turbo.json", "--models-dir", str(tiny_models), "--device", "cpu"]
    result = runner.invoke(app, [*args, *[x for s in sets for x in ("--set", s)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (
        "running the template" in result.stderr
        and "zturbo/templates/image_z_image_turbo.json" in result.stderr
    )
    assert "running KSampler (#" in result.stderr and "running node" not in result.stderr
    assert "\r" not in result.stderr
    (saved,) = [line for line in result.stdout.split() if line.endswith(".png")]
    assert json.loads(zturbo.output.png.read_png_text(saved)["workflow"])["nodes"]
