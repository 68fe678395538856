"""A1111's long-prompt chunking: weighted runs → token chunks of 75, each framed start … end and padded to 77.

Per run (text, weight): tokenize the text, give each token the run's weight; fill chunks of `size` tokens. When a
chunk is full and the next token is no comma, the tokens after the chunk's last comma move to the next chunk if that
comma lies within the last `backtrack` tokens (A1111's `comma_padding_backtrack`, 20 by default), so a phrase is not
cut in two. A BREAK run ends the chunk early. A textual-inversion token (its name's token ids found in a run) takes
as many positions as it has vectors, never split across chunks; its positions are recorded as a `Fix`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ldmcli.prompts.syntax import BREAK_RUN, Runs

BACKTRACK = 20


@dataclass
class Fix:
    """Token positions [start, start + len(vectors)) of a framed chunk whose input vectors an embedding replaces."""
    start: int
    embedding: object


@dataclass
class Chunk:
    tokens: List[int] = field(default_factory=list)
    weights: List[float] = field(default_factory=list)
    fixes: List[Fix] = field(default_factory=list)


@dataclass(frozen=True)
class Framing:
    """How a tokenizer frames a chunk: start/end/pad ids, chunk size (window − 2), the comma's id (None: none)."""
    start: int
    end: int
    pad: int
    size: int
    comma: Optional[int]


def framing_of(tokenizer) -> Framing:
    """The framing of one of ldmcli's tokenizers (CLIP BPE: SOT/EOT; BERT and words: [CLS]/[SEP]/[PAD])."""
    if hasattr(tokenizer, "sot_id"):
        start, end = tokenizer.sot_id, tokenizer.eot_id
        comma = tokenizer.encoder.get(",</w>")
    else:
        start, end = tokenizer.cls_id, tokenizer.sep_id
        vocab = getattr(tokenizer, "vocab", None)
        comma = vocab.get(",") if isinstance(vocab, dict) else None    # the words vocabulary has no punctuation
    return Framing(start, end, tokenizer.pad_id, tokenizer.max_length - 2, comma)


def find_embedding(ids: Sequence[int], at: int, lookup: dict) -> Tuple[Optional[object], int]:
    """(embedding, number of prompt tokens its name spans) when an embedding's name starts at `ids[at]`; the
    longest name wins. `lookup`: first id → [(name ids, embedding)] sorted longest first."""
    for name_ids, embedding in lookup.get(ids[at], ()):
        if list(ids[at:at + len(name_ids)]) == list(name_ids):
            return embedding, len(name_ids)
    return None, 1


def make_chunks(runs: Runs, encode, framing: Framing, lookup: Optional[dict] = None,
                backtrack: int = BACKTRACK) -> List[Chunk]:
    """The framed chunks of a parsed prompt; one chunk at least (an empty prompt gives start, end, padding)."""
    lookup = lookup or {}
    size = framing.size
    chunks: List[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def close() -> Chunk:
        nonlocal last_comma
        chunks.append(_framed(chunk, framing))
        last_comma = -1
        return Chunk()

    for text, weight in runs:
        if (text, weight) == BREAK_RUN:
            chunk = close()
            continue
        ids, at = encode(text), 0
        while at < len(ids):
            if ids[at] == framing.comma:
                last_comma = len(chunk.tokens)
            elif backtrack and len(chunk.tokens) == size and last_comma != -1 \
                    and len(chunk.tokens) - last_comma <= backtrack:
                cut = last_comma + 1    # the tokens after the comma start the next chunk
                # an embedding after the comma moves with its tokens (A1111 leaves its vectors behind, a bug)
                moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:],
                              [Fix(f.start - cut, f.embedding) for f in chunk.fixes if f.start > cut])
                chunk = Chunk(chunk.tokens[:cut], chunk.weights[:cut], [f for f in chunk.fixes if f.start <= cut])
                chunk = close()
                chunk = moved
            if len(chunk.tokens) == size:
                chunk = close()
            embedding, span = find_embedding(ids, at, lookup)
            if embedding is None:
                chunk.tokens.append(ids[at])
                chunk.weights.append(weight)
            else:
                n = len(embedding.vectors)
                if len(chunk.tokens) + n > size:
                    chunk = close()
                chunk.fixes.append(Fix(len(chunk.tokens) + 1, embedding))   # +1: after the start token
                chunk.tokens += [0] * n      # placeholders (A1111's): the vectors replace their token embeddings
                chunk.weights += [weight] * n
            at += span
    if chunk.tokens or not chunks:
        close()
    return chunks


def _framed(chunk: Chunk, framing: Framing) -> Chunk:
    """start, the tokens, end, then padding to size + 2; start, end and padding weigh 1 (A1111 pads with `end`
    and then, for a tokenizer whose pad id differs (open_clip's 0), rewrites every position after the first end)."""
    n = len(chunk.tokens)
    tokens = [framing.start, *chunk.tokens, framing.end] + [framing.pad] * (framing.size - n)
    return Chunk(tokens, [1.0, *chunk.weights, 1.0] + [1.0] * (framing.size - n), chunk.fixes)


def empty_chunk(framing: Framing) -> Chunk:
    """The chunk of the empty prompt, which pads the shorter of prompt and negative prompt (A1111 `empty_chunk`)."""
    return _framed(Chunk(), framing)


__all__ = ["BACKTRACK", "Chunk", "Fix", "Framing", "empty_chunk", "framing_of", "make_chunks"]
