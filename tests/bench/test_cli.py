"""`zturbo bench` argument parsing."""

import pytest

from zturbo.bench.cli import _size
from zturbo.errors import InputError


def test_size_reads_width_by_height() -> None:
    assert _size("1024x768") == (1024, 768)


@pytest.mark.parametrize("text", ["1024", "1024x768x3", "axb", ""])
def test_size_refuses_anything_but_two_numbers(text: str) -> None:
    with pytest.raises(InputError, match="--sizes: expected WxH"):
        _size(text)
