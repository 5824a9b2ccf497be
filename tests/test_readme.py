"""The README's set-up section: Linux/macOS CPU users install the CPU build of torch first (issue 12.6)."""

from __future__ import annotations

from pathlib import Path


def test_readme_tells_cpu_users_to_install_the_cpu_build_first():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("## Usage", 1)[0]
    cpu = setup.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < setup.index("pip install -e .") and "zturbo doctor" in setup
