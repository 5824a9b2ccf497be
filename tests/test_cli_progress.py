"""What the CLI shows while it works: phases, then a step bar with rate and ETA from the first step,
one plain line at a time in a log; `zturbo run` names nodes by type (issue 12, defect 5)."""

from __future__ import annotations

import io

from rich.console import Console

from zturbo.cli_progress import Display, WorkflowDisplay


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
