"""The official Z-Image-Turbo template ships with zturbo, unmodified (issue 12, defect 6)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import zturbo
from zturbo.errors import InputError
from zturbo.templates import find_workflow, template_path


def test_the_turbo_template_is_shipped_unmodified():
    shipped = template_path("image_z_image_turbo")
    assert shipped is not None and shipped.parent == Path(zturbo.__file__).parent / "templates"
    spec = importlib.util.find_spec("comfyui_workflow_templates_json")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-workflow-templates-json is not installed")
    upstream = Path(next(iter(spec.submodule_search_locations))) / "templates" / shipped.name
    assert json.loads(shipped.read_text(encoding="utf-8")) == json.loads(upstream.read_text(encoding="utf-8"))


def test_a_workflow_path_wins_over_a_template(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "image_z_image_turbo.json").write_text("{}")
    assert find_workflow(Path("image_z_image_turbo.json")) == Path("image_z_image_turbo.json")
    with pytest.raises(InputError, match="no such file, and no workflow template of that name"):
        find_workflow(Path("nothing.json"))
