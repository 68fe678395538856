"""Tokenizer parity: CLIP BPE vs transformers' CLIPTokenizer and open_clip; WordPiece vs BertTokenizer."""
from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from ldmcli.models.config import BERTConfig, CLIPTextConfig, OpenCLIPTextConfig
from ldmcli.errors import UsageError
from ldmcli.tokenizers import CLIPBPETokenizer, WordPieceTokenizer, tokenizer_for
from ldmcli.tokenizers.clip_bpe import VOCAB_FILE, find_vocab, load_bpe

EOT, SOT = 49407, 49406
LONG = "a highly detailed matte painting of a sprawling cyberpunk city at night, " * 8

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT",
    "",
    " ",
    "   leading and trailing   spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "hello, world! how's it going? it'll be fine; we're ok: they've said so, I'm sure, you'd agree",
    "punctuation: ... !!! ??? --- ((brackets)) [square] {curly} <angle> @#$%^&*_+=|\\/~`",
    "numbers 1234567890 and 3.14159, 1e-5, 10x, 4k, 8K uhd",
    "café naïve résumé façade über straße",
    "Ελληνικά και русский текст",
    "日本語のテキスト と 中文 和 한국어",
    "emoji 🐱🚀✨ and flags 🇫🇷 👩‍👩‍👧",
    "an oil painting by greg rutkowski, trending on artstation, 8k, octane render",
    "a cat's toy, the dog's bone, rock'n'roll, o'clock",
    "snake_case-and-kebab-case.and.dots",
    "'quoted' \"double quoted\"",
    "a|b|c ~~~ ^^^",
    "mixed123numbers456letters",
    "x" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|startoftext|> literal specials <|endoftext|>",
    "open_clip's spelling <start_of_text> of the specials<end_of_text>",
    "masterpiece, best quality, (detailed:1.2), [lowres]",
    "a \u00a0non-breaking\u2003em space",
    "zero\u200bwidth space",
    "math ∑ ∫ √ ≠ ≤ → ← ×",
    LONG,
    " ".join(str(i) for i in range(120)),
]


def load_open_clip_tokenizer():
    """open_clip's own `tokenizer.py`, loaded from its file: importing the package needs torchvision."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip_torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """transformers' CLIPTokenizer built from the same gz file: vocab.json + merges.txt, the standard construction."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    with gzip.open(find_vocab(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("hf_clip")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def sd1_tok():
    return CLIPBPETokenizer(style="hf")


@pytest.fixture(scope="module")
def sd2_tok():
    return CLIPBPETokenizer(style="open_clip")


def test_clip_bpe_matches_transformers(hf_clip, sd1_tok):
    # the HF tokenizer has no ftfy/HTML step; these prompts are unchanged by it (checked separately below)
    ours = sd1_tok(PROMPTS)
    ref = hf_clip(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ours.shape == (len(PROMPTS), 77) and ours.dtype == torch.long
    for prompt, a, b in zip(PROMPTS, ours, ref):
        assert a.tolist() == b.tolist(), prompt


def test_clip_bpe_matches_open_clip(sd2_tok):
    # open_clip is the SD2 reference, ftfy + HTML unescape included: add prompts those steps change
    ref_tok = load_open_clip_tokenizer()
    prompts = PROMPTS + ["“curly quotes” and ‘single’ ones", "fish &amp; chips &lt;3 &amp;amp;",
                         "mojibake cafÃ©", "ligature ﬁ and fullwidth ＡＢＣ１２３"]
    assert sd2_tok(prompts).tolist() == ref_tok(prompts).tolist()


def test_sd1_pads_with_eot_and_sd2_with_zero(sd1_tok, sd2_tok):
    sd1, sd2 = sd1_tok("a cat"), sd2_tok("a cat")
    assert sd1[0, :4].tolist() == sd2[0, :4].tolist() == [SOT, 320, 2368, EOT]
    assert (sd1[0, 4:] == EOT).all() and (sd2[0, 4:] == 0).all()
    assert sd1_tok("")[0, :3].tolist() == [SOT, EOT, EOT] and sd2_tok("")[0, :3].tolist() == [SOT, EOT, 0]


def test_overflow_keeps_75_tokens_and_forces_eot(sd1_tok, sd2_tok):
    ids = sd2_tok.encode(LONG)
    assert len(ids) > 75
    for tok in (sd1_tok, sd2_tok):
        row = tok(LONG)[0].tolist()
        assert row == [SOT, *ids[:75], EOT]


def test_batch_and_single_string(sd1_tok):
    assert sd1_tok("a cat").tolist() == sd1_tok(["a cat"]).tolist()
    assert sd1_tok(["a", "b", "c"]).shape == (3, 77)


def test_vocab_loading_is_cached_and_fast():
    path = find_vocab()
    load_bpe.cache_clear()
    start = time.perf_counter()
    encoder, ranks = load_bpe(path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    CLIPBPETokenizer()
    again = time.perf_counter() - start
    assert len(encoder) == 49408 and len(ranks) == 48894
    assert first < 1.0 and again < 0.05, (first, again)


def test_explicit_vocab_path_and_missing_vocab(tmp_path):
    assert CLIPBPETokenizer(find_vocab())("a cat").tolist() == CLIPBPETokenizer()("a cat").tolist()
    with pytest.raises(UsageError, match="pip install --no-deps open_clip_torch"):
        CLIPBPETokenizer(tmp_path / VOCAB_FILE)


# --- WordPiece ----------------------------------------------------------------------------------------------------

WORDS = ["a", "an", "the", "of", "on", "in", "painting", "photo", "cat", "dog", "horse", "astronaut", "riding",
         "city", "night", "cafe", "naive", "un", "##believ", "##able", "##s", "##ing", "##ed", "play", "##er",
         "resume", "street", "!", ",", ".", "'", "?", "-", "(", ")", "$", "+", "^", "`", "|", "1", "2", "3",
         "##0", "##4", "中", "文", "日", "本", "x", "##x", "super", "##cal", "##i"]
BERT_PROMPTS = [
    "a painting of a cat",
    "A PHOTO of an Astronaut riding a horse!",
    "",
    "unbelievable players playing",
    "café naïve résumé",
    "cats, dogs & horses (riding) on the street at night?",
    "1230 + 24 = $3^2 `x`|y",
    "中文 日本語",
    "a zebra in a xylophone factory",
    "don't stop-the-city...",
    "tabs\tand\nnew\r\nlines   and  \u00a0 spaces",
    "control\x00chars\x07here\ufffd",
    "x" * 101,
    "x" * 100,
    "supercali",
    " ".join(["cat"] * 120),
]


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(specials + WORDS) + "\n", encoding="utf-8")
    return path


def test_wordpiece_matches_transformers(bert_vocab):
    from transformers import BertTokenizer

    ref = BertTokenizer.from_pretrained(str(bert_vocab.parent))
    ours = WordPieceTokenizer(bert_vocab)(BERT_PROMPTS)
    expected = ref(BERT_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    for prompt, a, b in zip(BERT_PROMPTS, ours, expected.input_ids):
        assert a.tolist() == b.tolist(), prompt


def test_wordpiece_layout(bert_vocab):
    tok = WordPieceTokenizer(bert_vocab)
    assert tok("")[0, :3].tolist() == [101, 102, 0]            # the unconditional prompt of LDM CFG
    row = tok(" ".join(["cat"] * 120))[0]
    assert row[0] == 101 and row[-1] == 102 and row.shape == (77,)
    assert tok.encode("zebra") == [100] and tok.encode("x" * 101) == [100]


def test_wordpiece_missing_vocab_names_the_file_and_option(tmp_path):
    for path in (None, tmp_path / "vocab.txt"):
        with pytest.raises(UsageError, match=r"vocab\.txt.*--bert-vocab"):
            WordPieceTokenizer(path)


def test_tokenizer_for(bert_vocab):
    assert tokenizer_for(CLIPTextConfig()).pad_id == EOT
    assert tokenizer_for(OpenCLIPTextConfig()).pad_id == 0
    assert isinstance(tokenizer_for(BERTConfig(), bert_vocab), WordPieceTokenizer)
    with pytest.raises(UsageError, match="--bert-vocab"):
        tokenizer_for(BERTConfig())
    with pytest.raises(UsageError, match="token ids"):
        tokenizer_for(BERTConfig(tokenizer="none"))
