"""`--vram-plans` parsing of the small-GPU benchmark rows (checked before any model is written)."""

import pytest

from zturbo.bench.memory import plan_sizes
from zturbo.errors import InputError


def test_plan_sizes_sorts_largest_first() -> None:
    assert plan_sizes(["4G", "12G", "8G"]) == [("12G", 12.0), ("8G", 8.0), ("4G", 4.0)]


def test_plan_sizes_refuses_auto_with_one_line() -> None:
    # parse_vram("auto") is None: it used to reach the sort key `-e[1]` (TypeError) after models were built
    with pytest.raises(InputError, match=r"--vram-plans: 'auto' is not a card size"):
        plan_sizes(["8G", "auto"])
