"""JSON from clients, parsed within limits.

Python's parser recurses once per nesting level (deep input raises RecursionError), refuses integers over 4300
digits with a plain ValueError, reads NaN, Infinity and 1e999 as floats JSON cannot carry, and keeps the last of
two equal keys. Each of those is refused here with a one-line reason, before or while parsing.
"""

import json
import math
from collections.abc import Iterator
from typing import Any

MAX_DEPTH = 10
MAX_NUMBER_CHARS = 40


class JsonRefused(ValueError):
    """The text is not JSON this API accepts; the message completes a sentence whose subject is the field name."""


def loads(text: str, max_chars: int) -> Any:
    """Parse `text`, refusing what the standard parser would crash on, bend or silently drop (JsonRefused); a
    syntax error is json.JSONDecodeError as usual."""
    if len(text) > max_chars:
        raise JsonRefused(f"is longer than {max_chars} characters")
    if _deeper_than(text, MAX_DEPTH):
        raise JsonRefused(f"is nested deeper than {MAX_DEPTH} levels")
    value = json.loads(text, object_pairs_hook=_unique_keys, parse_int=_integer, parse_float=_finite_float,
                       parse_constant=_no_constant)
    for string in _strings(value):
        if "\x00" in string:
            raise JsonRefused("contains a NUL character")
        if not _encodable(string):
            raise JsonRefused("contains a lone surrogate escape (\\ud800-\\udfff), which is no character")
    return value


def _deeper_than(text: str, limit: int) -> bool:
    """Bracket depth outside strings, counted before parsing: the parser itself would recurse that deep."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise JsonRefused(f"has the key {key!r} twice")
        seen.add(key)
    return dict(pairs)


def _number_text(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonRefused(f"has a number longer than {MAX_NUMBER_CHARS} characters")
    return text


def _integer(text: str) -> int:
    return int(_number_text(text))


def _finite_float(text: str) -> float:
    number = float(_number_text(text))
    if not math.isfinite(number):
        raise JsonRefused(f"has the number {text}, too large for a 64-bit float")
    return number


def _no_constant(name: str) -> None:
    raise JsonRefused(f"contains {name}, which JSON does not allow")


def _strings(value: Any) -> Iterator[str]:
    """Every string in a parsed value, object keys included (depth is bounded, so recursion is safe)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _encodable(string: str) -> bool:
    try:
        string.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
