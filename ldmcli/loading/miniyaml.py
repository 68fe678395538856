"""A small YAML reader for the original LDM/SD model configs — PyYAML is not a runtime dependency.

Supported: block mappings and sequences by indentation, flow sequences `[1, 2]` and flow mappings `{a: 1}` on one
line, plain/single/double-quoted scalars, comments, `null`/`~`, YAML 1.1 booleans. That is every construct used by
the configs of CompVis latent-diffusion, stable-diffusion and Stability-AI stablediffusion. Anything else (anchors,
tags, multi-line scalars) raises `ValueError` with the line number.
"""
from __future__ import annotations

import re
from typing import Any, List, Tuple

_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_INT = re.compile(r"[-+]?[0-9]+$")
_FLOAT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")


def loads(text: str) -> Any:
    lines = _logical_lines(text)
    if not lines:
        return None
    value, pos = _block(lines, 0, lines[0][0])
    if pos != len(lines):
        raise ValueError(f"line {lines[pos][2]}: unexpected indentation")
    return value


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _logical_lines(text: str) -> List[Tuple[int, str, int]]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.strip() in ("---", "..."):
            continue
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise ValueError(f"line {n}: tab in indentation")
        out.append((len(line) - len(line.lstrip()), line.strip(), n))
    return out


def _block(lines, pos, indent):
    if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
        return _sequence(lines, pos, indent)
    return _mapping(lines, pos, indent)


def _sequence(lines, pos, indent):
    out = []
    while pos < len(lines) and lines[pos][0] == indent and (lines[pos][1] == "-" or lines[pos][1].startswith("- ")):
        rest = lines[pos][1][1:].strip()
        if not rest:
            pos += 1
            if pos < len(lines) and lines[pos][0] > indent:
                value, pos = _block(lines, pos, lines[pos][0])
            else:
                value = None
        elif _key_value(rest) is not None:      # "- key: value" starts an inline mapping
            after_dash = lines[pos][1][1:]
            inner = indent + 1 + len(after_dash) - len(after_dash.lstrip())
            lines[pos] = (inner, rest, lines[pos][2])
            value, pos = _mapping(lines, pos, inner)
        else:
            value, pos = _scalar(rest, lines[pos][2]), pos + 1
        out.append(value)
    return out, pos


def _key_value(text: str):
    m = re.match(r"""^("[^"]*"|'[^']*'|[^'"\[\]{},:#][^:#]*?|[^'"\[\]{},:#]?)\s*:(\s+(.*)|$)""", text)
    if not m:
        return None
    key = m.group(1).strip()
    if key[:1] in "'\"":
        key = key[1:-1]
    return key, (m.group(3) or "").strip()


def _mapping(lines, pos, indent):
    out = {}
    while pos < len(lines) and lines[pos][0] == indent:
        _, text, n = lines[pos]
        kv = _key_value(text)
        if kv is None:
            raise ValueError(f"line {n}: expected 'key: value', got {text!r}")
        key, rest = kv
        pos += 1
        if rest:
            out[key] = _scalar(rest, n)
        elif pos < len(lines) and (lines[pos][0] > indent or
                                   (lines[pos][0] == indent and lines[pos][1].startswith("- "))):
            out[key], pos = _block(lines, pos, lines[pos][0])
        else:
            out[key] = None
    if pos < len(lines) and lines[pos][0] > indent:
        raise ValueError(f"line {lines[pos][2]}: unexpected indentation")
    return out, pos


def _scalar(text: str, n: int) -> Any:
    if text[:1] in "&*!|>":
        raise ValueError(f"line {n}: YAML feature not supported here: {text[:20]!r}")
    if text.startswith("["):
        return _flow(text, n)[0]
    if text.startswith("{"):
        return _flow(text, n)[0]
    return _plain(text)


def _plain(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("null", "~", ""):
        return None
    if low in _BOOLS:
        return _BOOLS[low]
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _flow(text: str, n: int, i: int = 0):
    """Parse a flow collection starting at text[i]; returns (value, index after it)."""
    close = "]" if text[i] == "[" else "}"
    items, i = [], i + 1
    while True:
        while i < len(text) and text[i] in " ,":
            i += 1
        if i >= len(text):
            raise ValueError(f"line {n}: unclosed {text[0]!r}")
        if text[i] == close:
            break
        if text[i] in "[{":
            item, i = _flow(text, n, i)
        else:
            j, quote = i, None
            while j < len(text) and (quote or text[j] not in ",]}"):
                if text[j] in "'\"" and (quote is None or quote == text[j]):
                    quote = None if quote else text[j]
                j += 1
            item, i = text[i:j].strip(), j
        items.append(item)
    i += 1
    if close == "]":
        return [x if not isinstance(x, str) else _plain(x) for x in items], i
    out = {}
    for x in items:
        kv = _key_value(x) if isinstance(x, str) else None
        if kv is None:
            raise ValueError(f"line {n}: bad flow mapping entry {x!r}")
        out[kv[0]] = _plain(kv[1])
    return out, i
