"""Closed-vocabulary word tokenizer of the embedded default text models (BERTConfig tokenizer "words").

A prompt is lower-cased and split on every non-letter (digits, punctuation, spaces); each word maps to its index
in the vocabulary, a word outside it to [UNK]. Framing is BERT's (MODELS.md §6.1): [CLS] ids [SEP] then [PAD] up to
`max_length`, so the unconditional prompt "" is [CLS] [SEP] [PAD]…, as for the LDM BERTEmbedder. The vocabulary is
a tuple stored in the model's config (`BERTConfig.vocab`), so a checkpoint carries its own tokenizer; it starts
with the special tokens in `SPECIALS` order ([PAD] = 0).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch

from ldmcli.errors import UsageError
from ldmcli.tokenizers.clip_bpe import frame

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
_WORD_RE = re.compile(r"[^\W\d_]+")   # runs of letters (any script): \w minus digits and underscore


def words_of(text: str) -> List[str]:
    """The lower-cased words of a text; everything that is not a letter separates words."""
    return _WORD_RE.findall(text.lower())


def build_vocab(texts: Iterable[str], min_count: int = 1) -> Tuple[str, ...]:
    """SPECIALS, then every word seen at least `min_count` times in `texts`, sorted (so the ids do not depend
    on the order of the texts)."""
    counts: Dict[str, int] = {}
    for text in texts:
        for word in words_of(text):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIALS)
    return SPECIALS + tuple(words)


class WordsTokenizer:
    """Prompts → LongTensor [b, max_length]: [CLS], word ids (first max_length-2 kept), [SEP], [PAD]=0."""

    def __init__(self, vocab: Sequence[str], max_length: int = 77):
        vocab = tuple(vocab)
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
            raise UsageError(f"a words vocabulary must start with {', '.join(SPECIALS)}; got "
                             f"{', '.join(vocab[:len(SPECIALS)]) or 'an empty vocabulary'}")
        if len(set(vocab)) != len(vocab):
            raise UsageError("the words vocabulary lists a word twice")
        if max_length < 2:
            raise UsageError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (self.ids[s] for s in SPECIALS)
        self.max_length = max_length

    def encode(self, text: str) -> List[int]:
        """Word ids of one prompt, without [CLS]/[SEP] and without truncation."""
        return [self.ids.get(w, self.unk_id) for w in words_of(text)]

    def unknown_words(self, text: str) -> List[str]:
        """The words of `text` that the vocabulary lacks (they become [UNK]); for warnings."""
        return [w for w in words_of(text) if w not in self.ids]

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        return frame(texts, self.encode, self.cls_id, self.sep_id, self.pad_id, self.max_length)


__all__ = ["SPECIALS", "WordsTokenizer", "build_vocab", "words_of"]
