"""The closed-vocabulary word tokenizer of the embedded defaults (ldmcli/tokenizers/words.py)."""
import pytest
import torch

from ldmcli.models.config import BERTConfig
from ldmcli.errors import UsageError
from ldmcli.tokenizers import tokenizer_for
from ldmcli.tokenizers.words import SPECIALS, WordsTokenizer, build_vocab, words_of

VOCAB = SPECIALS + ("a", "blue", "circle", "red", "star")


def test_words_lowercase_and_split_on_non_letters():
    assert words_of("A Red-circle, 2 BLUE_stars!") == ["a", "red", "circle", "blue", "stars"]
    assert words_of("  ") == []
    assert words_of("Ünïcode ÉTOILE") == ["ünïcode", "étoile"]


def test_build_vocab_is_sorted_unique_and_order_free():
    v1 = build_vocab(["red circle", "a blue star", "Red star"])
    v2 = build_vocab(["Red star", "red circle", "a blue star"])
    assert v1 == v2 == VOCAB
    assert build_vocab(["red red blue"], min_count=2) == SPECIALS + ("red",)


def test_framing_pad_zero_and_unknown_words():
    tok = WordsTokenizer(VOCAB, max_length=8)
    cls, sep, unk = VOCAB.index("[CLS]"), VOCAB.index("[SEP]"), VOCAB.index("[UNK]")
    ids = tok(["a red circle", "a green star", ""])
    assert ids.dtype == torch.long and ids.shape == (3, 8)
    assert ids[0].tolist() == [cls, 4, 7, 6, sep, 0, 0, 0]
    assert ids[1].tolist() == [cls, 4, unk, 8, sep, 0, 0, 0]
    assert ids[2].tolist() == [cls, sep] + [0] * 6           # the unconditional prompt
    assert tok.pad_id == 0 and tok.unknown_words("a green star") == ["green"]


def test_truncation_keeps_sep_last():
    tok = WordsTokenizer(VOCAB, max_length=5)
    ids = tok("red red red red red red")[0].tolist()
    assert ids == [VOCAB.index("[CLS]"), 7, 7, 7, VOCAB.index("[SEP]")]


def test_single_string_gives_one_row():
    assert WordsTokenizer(VOCAB, 6)("blue star").shape == (1, 6)


@pytest.mark.parametrize("vocab", [(), ("a", "b"), SPECIALS + ("a", "a"), ("[UNK]", "[PAD]", "[CLS]", "[SEP]")])
def test_bad_vocabularies_are_usage_errors(vocab):
    with pytest.raises(UsageError):
        WordsTokenizer(vocab)


def test_tokenizer_for_reads_the_vocab_from_the_config():
    cfg = BERTConfig(vocab_size=len(VOCAB), max_seq_len=10, n_embed=32, n_layer=1, tokenizer="words", vocab=VOCAB)
    tok = tokenizer_for(cfg)
    assert isinstance(tok, WordsTokenizer) and tok.max_length == 10
    assert tok("blue circle")[0, :4].tolist() == [2, 5, 6, 3]
    with pytest.raises(UsageError):
        tokenizer_for(BERTConfig(tokenizer="words"))          # no vocabulary stored


def test_vocab_survives_the_checkpoint_header_json():
    from ldmcli.loading.detect import config_from_json, config_to_json
    from ldmcli.train.recipes import model_config, recipe
    cfg = model_config(recipe("cpu"), "txt2img", VOCAB)
    back = config_from_json(config_to_json(cfg))
    assert back == cfg and back.cond_stage.vocab == VOCAB and isinstance(back.cond_stage.vocab, tuple)


def test_text_encoder_encode_uses_the_words_tokenizer():
    from ldmcli.models.bert import BERTEmbedder
    cfg = BERTConfig(vocab_size=len(VOCAB), max_seq_len=8, n_embed=32, n_layer=1, heads=2, dim_head=16,
                     tokenizer="words", vocab=VOCAB)
    torch.manual_seed(0)
    enc = BERTEmbedder(cfg).eval()
    with torch.no_grad():
        out = enc.encode(["a red star", ""])
        ref = enc(WordsTokenizer(VOCAB, 8)(["a red star", ""]))
    assert out.shape == (2, 8, 32) and torch.equal(out, ref)
