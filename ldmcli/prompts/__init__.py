"""Prompts → cross-attention context: A1111 emphasis syntax, 75-token chunks, textual inversion, clip skip.

`encode(model, prompt, negative_prompt)` is the one way tasks turn prompts into context. Each prompt is parsed
into weighted runs (`syntax.parse`), tokenized into chunks of 75 tokens framed to 77 (`chunks.make_chunks`), each
chunk encoded on its own with any embedding vectors put in place of its placeholder tokens, the hidden states
multiplied by the token weights and rescaled to the unweighted mean (A1111: z·w·mean(z)/mean(z·w)), and the chunks
concatenated along the sequence: context [1, 77·k, width]. The shorter of prompt and negative prompt is padded with
the empty prompt's chunk, so both have the same length for classifier-free guidance. A plain prompt of at most 75
tokens gives exactly `get_learned_conditioning([prompt])`.

The BERT families (LDM txt2img, the embedded defaults) were trained on one window: their prompts are cut to it
with a warning naming what was dropped, BREAK is ignored with a warning, and words their vocabulary lacks are named
in a warning. Embeddings and clip skip are refused there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ldmcli.errors import UsageError
from ldmcli.prompts.chunks import Chunk, empty_chunk, framing_of, make_chunks
from ldmcli.prompts.embeddings import Embedding, check_width
from ldmcli.prompts.syntax import BREAK_RUN, literal, parse

log = logging.getLogger("ldmcli")


@dataclass(frozen=True)
class PromptSetup:
    """A run's choices for its text encoder: emphasis syntax on, clip skip (None: the model's own layer; 1 = the
    last layer, 2 = the penultimate, ...), textual-inversion embeddings."""
    syntax: bool = True
    clip_skip: Optional[int] = None
    embeddings: Tuple[Embedding, ...] = ()


class LiteralPrompt(str):
    """A prompt to take literally (a job's no_prompt_syntax): brackets and BREAK are plain text."""


def text_encoder(model):
    """The model's text encoder, or None (class, map, image and unconditional models)."""
    from ldmcli.models.clip_text import TextEncoder
    enc = getattr(model, "cond_stage_model", None)
    return enc if isinstance(enc, TextEncoder) and getattr(enc.cfg, "tokenizer", "clip") != "none" else None


def is_clip(enc) -> bool:
    from ldmcli.models.config import CLIPTextConfig, OpenCLIPTextConfig
    return isinstance(enc.cfg, (CLIPTextConfig, OpenCLIPTextConfig))


def configure(model, *, embeddings: Sequence[Embedding] = (), clip_skip: Optional[int] = None,
              syntax: bool = True) -> PromptSetup:
    """Attach the run's PromptSetup to the model's text encoder, or refuse (one line) what the model cannot do."""
    enc = text_encoder(model)
    name = model.cfg.name
    if enc is None or not is_clip(enc):
        if clip_skip is not None:
            raise UsageError(f"--clip-skip needs a CLIP text encoder (SD 1.x/2.x); {name} has none")
        if embeddings:
            raise UsageError(f"--embedding needs a CLIP text encoder (SD 1.x/2.x); {name} has none")
    if enc is None or not is_clip(enc):   # nothing to check: neither clip skip nor embeddings were asked for
        setup = PromptSetup(syntax, clip_skip, tuple(embeddings))
        if enc is not None:
            enc.prompt_setup = setup
        return setup
    if clip_skip is not None and not 1 <= clip_skip <= enc.cfg.layers:
        raise UsageError(f"--clip-skip must lie in 1..{enc.cfg.layers} for {name}, got {clip_skip}")
    check_width(embeddings, enc.cfg.width, name)
    enc.prompt_setup = PromptSetup(syntax, clip_skip, tuple(embeddings))
    return enc.prompt_setup


def encode(model, prompt: str, negative_prompt: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """(context, uncond) of a prompt and its negative prompt, each [1, 77·k, width] with the same k."""
    enc = text_encoder(model)
    setup = enc.prompt_setup or PromptSetup()
    cond, uncond = prompt_chunks(enc, prompt, setup), prompt_chunks(enc, negative_prompt, setup)
    framing = framing_of(enc.get_tokenizer())
    n = max(len(cond), len(uncond))
    cond += [empty_chunk(framing)] * (n - len(cond))
    uncond += [empty_chunk(framing)] * (n - len(uncond))
    return encode_chunks(enc, cond, setup), encode_chunks(enc, uncond, setup)


def prompt_chunks(enc, prompt: str, setup: PromptSetup) -> List[Chunk]:
    """The framed chunks of one prompt for this encoder (one chunk only for the BERT families)."""
    tokenizer = enc.get_tokenizer()
    runs = parse(prompt) if setup.syntax and not isinstance(prompt, LiteralPrompt) else literal(prompt)
    _warn_unknown(tokenizer, runs)
    framing = framing_of(tokenizer)
    if is_clip(enc):
        return make_chunks(runs, tokenizer.encode, framing, _lookup(tokenizer, setup.embeddings))
    if BREAK_RUN in runs:
        log.warning(f"BREAK ignored: {enc.cfg.__class__.__name__} models read one {framing.size}-token window")
        runs = [r for r in runs if r != BREAK_RUN]
    chunks = make_chunks(runs, tokenizer.encode, framing, backtrack=0)
    if len(chunks) > 1:
        dropped = sum(len(c.tokens) - 2 - c.tokens.count(framing.pad) for c in chunks[1:])
        log.warning(f"prompt cut to this model's {framing.size}-token window: the last {dropped} token(s) of "
                    f"{prompt[:60]!r}… are dropped")
    return chunks[:1]


def _lookup(tokenizer, embeddings: Sequence[Embedding]) -> dict:
    """First token id of each embedding's name → [(name ids, embedding)], longest name first (A1111's order)."""
    lookup: dict = {}
    for emb in embeddings:
        ids = tokenizer.encode(emb.name)
        if ids:
            lookup.setdefault(ids[0], []).append((ids, emb))
    for entries in lookup.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    return lookup


def _warn_unknown(tokenizer, runs) -> None:
    """A warning naming the words a fixed vocabulary cannot represent (they would become [UNK])."""
    finder = getattr(tokenizer, "unknown_words", None)
    if finder is None:
        return      # CLIP's byte-level BPE represents every text
    unknown = list(dict.fromkeys(w for text, _ in runs for w in finder(text)))
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        log.warning(f"not in this model's vocabulary (read as unknown): {shown}")


def encode_chunks(enc, chunks: List[Chunk], setup: PromptSetup) -> torch.Tensor:
    """Each chunk through the encoder, its embeddings in place, weighted and mean-rescaled; concatenated [1, 77·k, w]."""
    device = next(enc.parameters()).device
    n_blocks = None
    if setup.clip_skip is not None:
        n_blocks = enc.cfg.layers - (setup.clip_skip - 1)   # clip skip N: the hidden state of layer -N
    out = []
    for chunk in chunks:
        tokens = torch.tensor([chunk.tokens], device=device)
        vectors = None
        if chunk.fixes:
            vectors = enc.token_embedding(tokens).clone()     # [1, L, width]
            for fix in chunk.fixes:
                v = fix.embedding.vectors
                vectors[0, fix.start:fix.start + len(v)] = v.to(vectors)
        z = enc(tokens, vectors=vectors, n_blocks=n_blocks)
        if any(w != 1.0 for w in chunk.weights):
            weights = torch.tensor(chunk.weights, device=device, dtype=z.dtype)
            mean = z.mean()
            z = z * weights[None, :, None]
            z = z * (mean / z.mean())
        out.append(z)
    return torch.cat(out, dim=1)


def setup_record(model) -> dict:
    """The image record's fields of the run's PromptSetup: clip skip, the embeddings (name, A1111 short hash,
    path) and A1111's `TI hashes` text; None where unused (a model without a text encoder among them)."""
    enc = text_encoder(model)
    setup = (enc.prompt_setup if enc is not None else None) or PromptSetup()
    embeddings = setup.embeddings
    return {"clip_skip": setup.clip_skip,
            "embeddings": [{"name": e.name, "hash": e.hash} for e in embeddings] or None,
            "embedding_paths": [str(Path(e.path).resolve()) for e in embeddings] or None,
            "ti_hashes": ", ".join(f"{e.name}: {e.hash}" for e in embeddings) or None}


__all__ = ["LiteralPrompt", "PromptSetup", "configure", "encode", "encode_chunks", "prompt_chunks", "setup_record",
           "text_encoder"]
