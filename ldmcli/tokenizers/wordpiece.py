"""BERT uncased WordPiece (Devlin et al. 2019), as `bert-base-uncased` tokenizes LDM txt2img prompts (MODELS.md §6.1).

Basic tokenizer (drop control characters, blank CJK ideographs apart, lower case, strip accents, split on
whitespace and punctuation), then greedy longest-match-first word pieces with the `##` continuation prefix.
The reference runs HF's Rust `BertTokenizerFast`; the character classes below follow its normalizer.
The vocabulary is the user's `vocab.txt` (one token a line, id = line number): no PyPI package ships it.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch

from ldmcli.errors import UsageError
from ldmcli.tokenizers.clip_bpe import frame

MAX_WORD_CHARS = 100        # longer words become [UNK] whole
# CJK Unified Ideographs blocks and their extensions / compatibility blocks (not Hangul or kana)
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    # every ASCII symbol counts ($, +, ^, ` … are not Unicode "P*"), plus all Unicode punctuation
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 \
        or unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES)


def basic_tokenize(text: str) -> List[str]:
    """Normalised words and single punctuation marks, in order."""
    chars = []
    for ch in text:
        if ch in ("\0", "\ufffd") or _is_control(ch):
            continue
        chars.append(" " if ch.isspace() else f" {ch} " if _is_cjk(ch) else ch)
    text = unicodedata.normalize("NFD", "".join(chars).lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")   # strip accents
    words: List[str] = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if _is_punctuation(ch):
                words.extend(w for w in (chunk[start:i], ch) if w)
                start = i + 1
        if chunk[start:]:
            words.append(chunk[start:])
    return words


@lru_cache(maxsize=4)
def load_vocab(path: Path) -> Dict[str, int]:
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


class WordPieceTokenizer:
    """Prompts → LongTensor [b, max_length]: [CLS], word pieces (first max_length-2 kept), [SEP], [PAD]=0."""

    def __init__(self, vocab_path: Union[str, Path, None], max_length: int = 77):
        if vocab_path is None or not Path(vocab_path).is_file():
            where = f" (looked for {vocab_path})" if vocab_path is not None else ""
            raise UsageError("BERT tokenizer vocabulary not found" + where + ": put bert-base-uncased's "
                             "vocab.txt beside the checkpoint or pass --bert-vocab PATH")
        self.vocab = load_vocab(Path(vocab_path))
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in self.vocab]
        if missing:
            raise UsageError(f"{vocab_path} is not a BERT vocab.txt: no {', '.join(missing)}")
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.max_length = max_length

    def word_pieces(self, word: str) -> List[int]:
        """Greedy longest-match-first split of one word; [UNK] for the whole word if any part has no match."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids

    def encode(self, text: str) -> List[int]:
        """Word-piece ids of one prompt, without [CLS]/[SEP] and without truncation."""
        return [i for word in basic_tokenize(text) for i in self.word_pieces(word)]

    def unknown_words(self, text: str) -> List[str]:
        """The words of `text` that become [UNK] (no word-piece split exists); for warnings."""
        return [word for word in basic_tokenize(text) if self.word_pieces(word) == [self.unk_id]]

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        return frame(texts, self.encode, self.cls_id, self.sep_id, self.pad_id, self.max_length)
