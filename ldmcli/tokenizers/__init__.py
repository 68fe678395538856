"""Prompt tokenizers for the text encoders (MODELS.md §8): CLIP byte-level BPE (SD1, SD2) and BERT WordPiece (LDM).

Each is a plain callable object: `tokenizer(prompts) -> LongTensor [b, max_length]`; `encode(prompt)` gives the
ids of one prompt without the special tokens. Neither imports transformers or open_clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ldmcli.models.config import BERTConfig, CLIPTextConfig, OpenCLIPTextConfig
from ldmcli.errors import UsageError
from ldmcli.tokenizers.clip_bpe import CLIPBPETokenizer
from ldmcli.tokenizers.wordpiece import WordPieceTokenizer
from ldmcli.tokenizers.words import WordsTokenizer

__all__ = ["CLIPBPETokenizer", "WordPieceTokenizer", "WordsTokenizer", "tokenizer_for"]


def tokenizer_for(cfg, vocab_path: Union[str, Path, None] = None):
    """The tokenizer a text-encoder config was trained with; `vocab_path` overrides the vocabulary file.

    SD1 CLIP pads with EOT, SD2 OpenCLIP with 0 (MODELS.md §11 item 9). BERT needs the user's vocab.txt.
    """
    if isinstance(cfg, CLIPTextConfig):
        return CLIPBPETokenizer(vocab_path, cfg.max_length, style="hf")
    if isinstance(cfg, OpenCLIPTextConfig):
        return CLIPBPETokenizer(vocab_path, cfg.max_length, style="open_clip")
    if isinstance(cfg, BERTConfig) and cfg.tokenizer == "wordpiece":
        return WordPieceTokenizer(vocab_path, cfg.max_seq_len)
    if isinstance(cfg, BERTConfig) and cfg.tokenizer == "words":
        return WordsTokenizer(cfg.vocab, cfg.max_seq_len)    # the vocabulary travels in the config
    if isinstance(cfg, BERTConfig) and cfg.tokenizer == "none":
        raise UsageError("this BERT encoder takes token ids (layout2img bbox tokens), not prompts")
    kind = f"{type(cfg).__name__}(tokenizer={cfg.tokenizer!r})" if isinstance(cfg, BERTConfig) else type(cfg).__name__
    raise UsageError(f"no prompt tokenizer for {kind}")
