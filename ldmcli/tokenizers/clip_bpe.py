"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), for the SD1 and SD2 text encoders (MODELS.md §8).

Text → ftfy + HTML clean-up, whitespace collapsed, lower case → CLIP pre-tokenizer regex → each piece's UTF-8
bytes as printable characters → BPE merges by rank, the last symbol of a word marked `</w>` → ids.
The vocabulary is `bpe_simple_vocab_16e6.txt.gz`, read from the installed open_clip package (found without
importing it: importing open_clip pulls in torchvision) or from an explicit path.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import regex
import torch

from ldmcli.errors import UsageError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2      # merge lines 1..48894 of the file; vocab = 2·256 bytes + merges + 2 specials
SOT, EOT = "<|startoftext|>", "<|endoftext|>"     # the last two vocabulary entries, ids 49406 and 49407
# The two reference tokenizers differ in padding and in how the specials are spelled inside a prompt:
# HF CLIPTokenizer (SD1) pads with EOT and reads "<|startoftext|>"; open_clip (SD2) pads with 0 and reads
# "<start_of_text>" (MODELS.md §8, §11 item 9). style -> (pad id, spelled SOT, spelled EOT)
STYLES = {"hf": (49407, SOT, EOT), "open_clip": (0, "<start_of_text>", "<end_of_text>")}
# CLIP's pre-tokenizer after the specials: English contractions, letter runs, single digits, other-symbol runs
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPACES_RE = regex.compile(r"\s+")


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte → character table: printable Latin-1 bytes map to themselves, the other 68 bytes
    to U+0100 onwards, so no BPE symbol is whitespace or a control character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    # insertion order (printable bytes, then the others) is the order of the first 256 vocabulary entries
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def find_vocab(path: Union[str, Path, None] = None) -> Path:
    """The BPE vocabulary: `path` if given, else the copy inside the installed open_clip (or OpenAI clip) package."""
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = []
        for package in ("open_clip", "clip"):
            spec = importlib.util.find_spec(package)   # locates the package without executing it
            for folder in (spec.submodule_search_locations or []) if spec else []:
                candidates.append(Path(folder) / VOCAB_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f"{path}" if path is not None else "the installed packages"
    raise UsageError(f"CLIP BPE vocabulary {VOCAB_FILE} not found in {where}: "
                     f"run `pip install --no-deps open_clip_torch` or pass the vocabulary path")


@lru_cache(maxsize=4)
def load_bpe(path: Path) -> Tuple[Dict[str, int], Dict[Tuple[str, str], int]]:
    """(symbol → id, merge pair → rank) from the gzipped merges file, parsed once per path."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:N_MERGES + 1]     # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(bytes_to_unicode().values())
    symbols = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(pair) for pair in merges] + [SOT, EOT]
    return {s: i for i, s in enumerate(symbols)}, {pair: rank for rank, pair in enumerate(merges)}


def frame(texts: Union[str, Sequence[str]], encode: Callable[[str], List[int]],
          first: int, last: int, pad: int, length: int) -> torch.Tensor:
    """LongTensor [b, length]: per prompt `first`, its ids (the first length-2 kept), `last`, then `pad`."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    tokens = torch.full((len(texts), length), pad, dtype=torch.long)
    for row, text in zip(tokens, texts):
        ids = [first, *encode(text)[: length - 2], last]
        row[: len(ids)] = torch.tensor(ids)
    return tokens


def clean(text: str) -> str:
    """CLIP's text clean-up: ftfy repairs, HTML entities unescaped (twice), whitespace collapsed, lower case."""
    import ftfy   # imported on first use, so that CLI start-up does not pay for it

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _SPACES_RE.sub(" ", text).strip().lower()


class CLIPBPETokenizer:
    """Prompts → LongTensor [b, max_length]: SOT, BPE ids (first max_length-2 kept), EOT, then padding.

    style "hf" reproduces SD1's CLIPTokenizer (EOT padding), "open_clip" SD2's `open_clip.tokenize` (zero
    padding). Truncation is the same in both: HF cuts the ids to 75 before adding the specials, open_clip cuts
    at 77 and overwrites the last token with EOT.
    """

    def __init__(self, vocab_path: Union[str, Path, None] = None, max_length: int = 77, style: str = "hf"):
        if style not in STYLES:
            raise ValueError(f"style must be one of {tuple(STYLES)}, got {style!r}")
        self.encoder, self.ranks = load_bpe(find_vocab(vocab_path))
        self.byte_chars = bytes_to_unicode()
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.pad_id, spelled_sot, spelled_eot = STYLES[style]
        self.specials = {spelled_sot: self.sot_id, spelled_eot: self.eot_id}
        self.pattern = regex.compile("|".join(regex.escape(s) for s in self.specials) + "|" + _WORD_PATTERN,
                                     regex.IGNORECASE)
        self.max_length = max_length
        self.cache: Dict[str, Tuple[str, ...]] = {}

    def bpe(self, word: str) -> Tuple[str, ...]:
        """Merge the characters of one pre-token, lowest-ranked adjacent pair first, until no pair is known."""
        if word in self.cache:
            return self.cache[word]
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, N_MERGES))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):      # merge every occurrence of `best`, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[word] = tuple(symbols)
        return self.cache[word]

    def encode(self, text: str) -> List[int]:
        """BPE ids of one prompt, without SOT/EOT and without truncation."""
        ids = []
        for piece in self.pattern.findall(clean(text)):
            if piece in self.specials:
                ids.append(self.specials[piece])
                continue
            word = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(word))
        return ids

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        return frame(texts, self.encode, self.sot_id, self.eot_id, self.pad_id, self.max_length)
