"""ComfyUI's official Z-Image-Turbo workflow template, shipped so `zturbo run image_z_image_turbo.json`
works out of the box.

`image_z_image_turbo.json` is the template of that name from Comfy-Org/workflow_templates
(PyPI `comfyui-workflow-templates-json` 0.1.123, MIT licence), unmodified: the graph zturbo's PNG
metadata mirrors (`output.metadata.api_graph`). Any other template name is looked up in an installed
ComfyUI templates package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.console import Console

from zturbo.errors import InputError

SHIPPED = Path(__file__).parent
TEMPLATE_PACKAGES = ("comfyui_workflow_templates_json", "comfyui_workflow_templates")


def shipped_templates() -> list[str]:
    return sorted(p.name for p in SHIPPED.glob("*.json"))


def _installed(name: str) -> Path | None:
    for package in TEMPLATE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / "templates" / name
            if candidate.is_file():
                return candidate
    return None


def template_path(name: str) -> Path | None:
    """The template called `name` (`.json` optional): shipped with zturbo, else from ComfyUI's package."""
    name = name if name.endswith(".json") else f"{name}.json"
    shipped = SHIPPED / name
    return shipped if shipped.is_file() else _installed(name)


def find_workflow(path: Path, console: Console | None = None) -> Path:
    """`path` if it exists, else the template of that name (said on `console`); a clear error if neither."""
    if path.exists() or path.parent != Path("."):
        return path
    found = template_path(path.name)
    if found is None:
        raise InputError(
            f"{path}: no such file, and no workflow template of that name "
            f"(shipped with zturbo: {', '.join(shipped_templates())})"
        )
    if console is not None:
        console.print(f"{path}: not in this folder; running the template {found}", highlight=False)
    return found
