"""A1111's prompt emphasis syntax: a prompt → (text, weight) runs, as `parse_prompt_attention` defines them.

`(text)` multiplies the weight of its contents by 1.1, `[text]` divides it by 1.1, `(text:1.3)` multiplies it by 1.3;
brackets nest (weights multiply); `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters; an unclosed bracket applies to
the end of the prompt, a closing bracket without an opener is literal text. The word `BREAK` (upper case, a whole
word) ends the current 75-token chunk, inside brackets too; it comes out as the run `BREAK_RUN`. Consecutive runs
of equal weight merge, so a prompt without syntax is one run of weight 1.
"""
from __future__ import annotations

import re
from typing import List, Tuple

ROUND, SQUARE = 1.1, 1 / 1.1
BREAK_RUN = ("BREAK", -1.0)     # A1111's marker: no real run has a negative weight
# One lexeme per match: the escapes, a lone backslash, the brackets, ":weight)" closing a round bracket, plain text,
# a colon that is not followed by a weight. The same alternatives, in the same order, as A1111's `re_attention`.
_LEXEME = re.compile(r"""
\\\( | \\\) | \\\[ | \\\] | \\\\ | \\ | \( | \[ | :\s*([+-]?[.\d]+)\s*\) | \) | \] | [^\\()\[\]:]+ | :
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

Runs = List[Tuple[str, float]]


def parse(prompt: str) -> Runs:
    """(text, weight) runs of `prompt`, merged where neighbours share a weight; [("", 1.0)] for an empty prompt."""
    runs: List[list] = []
    round_open: List[int] = []     # index into `runs` where each open bracket started
    square_open: List[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if tuple(run) != BREAK_RUN:    # A1111 scales the marker too, and then reads "BREAK" as text of weight
                run[1] *= factor           # −1.1: here a BREAK inside brackets still breaks

    for m in _LEXEME.finditer(prompt):
        text, weight = m.group(0), m.group(1)
        if text.startswith("\\"):
            runs.append([text[1:], 1.0])    # an escape; a lone "\" adds nothing, as in A1111
        elif text == "(":
            round_open.append(len(runs))
        elif text == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), _number(weight))
        elif text == ")" and round_open:
            scale_from(round_open.pop(), ROUND)
        elif text == "]" and square_open:
            scale_from(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(text)):
                if i:
                    runs.append(list(BREAK_RUN))
                runs.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND)
    for start in square_open:
        scale_from(start, SQUARE)
    return _merge(runs) or [("", 1.0)]


def _number(text: str) -> float:
    """A weight as A1111's regex admits it ("1.2", ".5", "+2"); one that is no number ("1.2.3") counts as 1."""
    try:
        return float(text)
    except ValueError:
        return 1.0


def _merge(runs: List[list]) -> Runs:
    merged: List[list] = []
    for text, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]


def literal(prompt: str) -> Runs:
    """The runs of a prompt taken literally (--no-prompt-syntax): one run of weight 1, no BREAK."""
    return [(prompt, 1.0)]


__all__ = ["BREAK_RUN", "Runs", "literal", "parse"]
