"""JSON from clients, parsed so that whatever is accepted can always be stored and sent back.

Python's `json` accepts documents that later fail far from where they came in: a lone UTF-16
surrogate (`"\\ud800"`, valid JSON) cannot be encoded as UTF-8, so every later answer holding it is a
500 (one such `/settings` value broke `GET /settings` for good); `NaN` and `1e999` are refused by the
response encoder; a 4,300-digit number raises `ValueError`; nesting deeper than the recursion limit
raises `RecursionError`, and nesting a little shallower fails later, in another thread's `json.dumps`.
`loads` refuses all of these with one line naming the place (`InputError`, a 400).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from zturbo.errors import InputError

# The deepest of the 660 ComfyUI workflow templates nests 11 levels; a /prompt body adds 3.
MAX_DEPTH = 64
# Seeds are 20 digits at most; nothing we take needs more.
MAX_NUMBER_CHARS = 100
# A surrogate as a JSON escape, or as the bytes `json.loads` would decode with "surrogatepass".
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number has {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is not a finite float")
    return value


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON (only finite numbers are)")


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON document (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _path(parts: list[str]) -> str:
    return "".join(parts) or "the top level"


def lone_surrogate_at(value: Any) -> str | None:
    """Where in `value` a string (or key) holds a lone surrogate, e.g. `["k"][0]`; None if nowhere."""
    stack: list[tuple[Any, list[str]]] = [(value, [])]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return _path(where)
        elif isinstance(item, dict):
            for key, child in item.items():
                step = [*where, f"[{json.dumps(key)}]"]
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return _path(step) + " (its key)"
                stack.append((child, step))
        elif isinstance(item, list):
            stack.extend((child, [*where, f"[{i}]"]) for i, child in enumerate(item))
    return None


def check_text(value: str, what: str) -> str:
    """Refuse a string (a query value, a file name) that cannot be written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what}: not valid Unicode (it holds a lone UTF-16 surrogate)") from None
    return value


def loads(raw: bytes | str, what: str = "body") -> Any:
    """Parse client JSON; `InputError` naming `what` and the place for anything that cannot round-trip."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = nesting_depth(data)
    if depth > MAX_DEPTH:
        raise InputError(f"{what}: JSON nests {depth} levels deep (at most {MAX_DEPTH})")
    try:
        value = json.loads(
            data, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except _Refused as exc:
        raise InputError(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{what}: not valid JSON ({exc})") from None
    if _SURROGATE.search(data):
        where = lone_surrogate_at(value)
        if where is not None:
            raise InputError(
                f"{what}: the string at {where} is not valid Unicode (a lone UTF-16 surrogate such as "
                "\\ud800); send text as UTF-8"
            )
    return value
