"""Prompt syntax (A1111's documented examples), weighting and chunking against their definitions on random-weight
CLIP and OpenCLIP encoders, clip skip against transformers' hidden states, warnings for unknown words."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from ldmcli.errors import UsageError
from ldmcli.models import config as C
from ldmcli.prompts import LiteralPrompt, configure, encode
from ldmcli.prompts.chunks import Framing, make_chunks
from ldmcli.prompts.syntax import parse
from tiny import SD1_TINY, SD2_TINY, randomize_, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the parser: A1111's docstring examples of parse_prompt_attention ---------------------------------------------
@pytest.mark.parametrize("prompt, runs", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_parse_matches_a1111_docs(prompt, runs):
    assert parse(prompt) == runs


def test_parse_details():
    assert parse("((word))") == [("word", pytest.approx(1.21))]
    assert parse("[word]") == [("word", pytest.approx(1 / 1.1))]
    assert parse("[[word]]") == [("word", pytest.approx(1 / 1.21))]
    assert parse("(word: 1.3 )") == [("word", 1.3)]
    assert parse("unbalanced) close]") == [("unbalanced) close]", 1.0)]       # closers without openers are text
    assert parse("a \\\\ b \\[x\\]") == [("a \\ b [x]", 1.0)]
    assert parse("time: 12:30") == [("time: 12:30", 1.0)]
    assert parse("") == [("", 1.0)]
    assert parse("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse("BREAKFAST break") == [("BREAKFAST break", 1.0)]           # a whole, upper-case word only
    assert parse("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]      # breaks inside brackets too


# ---- chunking: A1111's tokenize_line on integer tokens ------------------------------------------------------------
FRAME = Framing(start=100, end=101, pad=0, size=5, comma=7)


def ids_of(text: str):
    return [int(t) for t in text.split()]


def test_chunks_frame_and_pad():
    (chunk,) = make_chunks([("1 2", 1.0), ("3", 2.0)], ids_of, FRAME)
    assert chunk.tokens == [100, 1, 2, 3, 101, 0, 0]
    assert chunk.weights == [1, 1, 1, 2, 1, 1, 1]
    (empty,) = make_chunks([("", 1.0)], ids_of, FRAME)
    assert empty.tokens == [100, 101, 0, 0, 0, 0, 0]


def test_chunks_split_at_size_without_comma():
    chunks = make_chunks([("1 2 3 4 5 6 8", 1.0)], ids_of, FRAME)
    assert [c.tokens for c in chunks] == [[100, 1, 2, 3, 4, 5, 101], [100, 6, 8, 101, 0, 0, 0]]


def test_chunks_backtrack_to_last_comma():
    # full chunk "1 7 2 3 4" + next token 5: the comma at index 1 is within `backtrack` tokens, so "2 3 4" moves on
    chunks = make_chunks([("1 7 2 3 4 5", 1.0)], ids_of, FRAME, backtrack=20)
    assert [c.tokens for c in chunks] == [[100, 1, 7, 101, 0, 0, 0], [100, 2, 3, 4, 5, 101, 0]]
    # a comma further back than `backtrack` tokens: a plain cut at the size
    chunks = make_chunks([("1 7 2 3 4 5", 1.0)], ids_of, FRAME, backtrack=3)
    assert [c.tokens for c in chunks] == [[100, 1, 7, 2, 3, 4, 101], [100, 5, 101, 0, 0, 0, 0]]
    # the next token being the comma itself: no backtrack, the comma opens the next chunk
    chunks = make_chunks([("1 7 2 3 4 7", 1.0)], ids_of, FRAME)
    assert chunks[1].tokens[:3] == [100, 7, 101]


def test_chunks_break():
    chunks = make_chunks(parse("1 2 BREAK 3"), ids_of, FRAME)
    assert [c.tokens for c in chunks] == [[100, 1, 2, 101, 0, 0, 0], [100, 3, 101, 0, 0, 0, 0]]


def test_backtrack_default_is_a1111s():
    from ldmcli.prompts.chunks import BACKTRACK
    assert BACKTRACK == 20


# ---- weighting and chunking on the encoders, against the definition -----------------------------------------------
def by_definition(enc, ids, weights):
    """A1111: z = τθ(tokens); z·w rescaled so that its mean is the mean of z."""
    z = enc(torch.tensor([ids]))
    w = torch.tensor(weights)[None, :, None]
    zw = z * w
    return zw * (z.mean() / zw.mean())


def framed(tok, ids, weights=None):
    n = len(ids)
    tokens = [tok.sot_id, *ids, tok.eot_id] + [tok.pad_id] * (75 - n)
    return tokens, [1.0, *(weights or [1.0] * n), 1.0] + [1.0] * (75 - n)


@pytest.mark.parametrize("cfg", [SD1_TINY, SD2_TINY], ids=["clip", "openclip"])
def test_weighting_matches_definition(cfg):
    model = tiny_model(cfg)
    enc = model.cond_stage_model
    tok = enc.get_tokenizer()
    with torch.no_grad():
        context, uncond = encode(model, "a (red:1.5) house [on] a hill", "")
        a, red, house, on, hill = (tok.encode(w) for w in ("a", "red", "house", "on", "a hill"))
        ids = a + red + house + on + hill
        weights = [1.0] * len(a) + [1.5] * len(red) + [1.0] * len(house) + [1 / 1.1] * len(on) + [1.0] * len(hill)
        torch.testing.assert_close(context, by_definition(enc, *framed(tok, ids, weights)), atol=1e-6, rtol=0)
        torch.testing.assert_close(uncond, model.get_learned_conditioning([""]))
        assert not torch.allclose(context, model.get_learned_conditioning(["a red house on a hill"]))


@pytest.mark.parametrize("cfg", [SD1_TINY, SD2_TINY], ids=["clip", "openclip"])
def test_plain_prompt_is_unchanged(cfg):
    model = tiny_model(cfg)
    with torch.no_grad():
        context, uncond = encode(model, "a photograph of an astronaut riding a horse", "blurry")
        assert torch.equal(context, model.get_learned_conditioning(["a photograph of an astronaut riding a horse"]))
        assert torch.equal(uncond, model.get_learned_conditioning(["blurry"]))


@pytest.mark.parametrize("cfg", [SD1_TINY, SD2_TINY], ids=["clip", "openclip"])
def test_long_prompt_chunks_and_negative_padding(cfg):
    model = tiny_model(cfg)
    enc = model.cond_stage_model
    tok = enc.get_tokenizer()
    words = " ".join(f"w{i}" for i in range(40))       # "w", then the digits: >75 tokens, no comma
    ids = tok.encode(words)
    assert 75 < len(ids) <= 150
    with torch.no_grad():
        context, uncond = encode(model, words, "blurry")
        assert context.shape == uncond.shape == (1, 154, enc.cfg.width)
        first = enc(torch.tensor([framed(tok, ids[:75])[0]]))
        second = enc(torch.tensor([framed(tok, ids[75:])[0]]))
        torch.testing.assert_close(context, torch.cat([first, second], 1), atol=1e-6, rtol=0)
        # the negative prompt: its own chunk, then the empty prompt's chunk
        expected = torch.cat([model.get_learned_conditioning(["blurry"]), model.get_learned_conditioning([""])], 1)
        torch.testing.assert_close(uncond, expected)
        # BREAK starts a new chunk: two chunks from a short prompt
        context, uncond = encode(model, "a cat BREAK a dog", "")
        assert context.shape[1] == uncond.shape[1] == 154
        torch.testing.assert_close(context[:, 77:], model.get_learned_conditioning(["a dog"]))


def test_comma_backtrack_on_clip():
    model = tiny_model(SD1_TINY)
    tok = model.cond_stage_model.get_tokenizer()
    prompt = "a " * 70 + ", " + "b " * 10
    ids = tok.encode(prompt)
    comma = ids.index(tok.encoder[",</w>"])
    with torch.no_grad():
        context, _ = encode(model, prompt, "")
        enc = model.cond_stage_model
        first = enc(torch.tensor([framed(tok, ids[:comma + 1])[0]]))
        torch.testing.assert_close(context[:, :77], first, atol=1e-6, rtol=0)


def test_no_prompt_syntax_takes_brackets_literally():
    model = tiny_model(SD1_TINY)
    with torch.no_grad():
        literal, _ = encode(model, LiteralPrompt("a (red) cat BREAK x"), "")
        assert torch.equal(literal, model.get_learned_conditioning(["a (red) cat BREAK x"]))
        configure(model, syntax=False)
        literal, _ = encode(model, "a (red) cat", "")
        assert torch.equal(literal, model.get_learned_conditioning(["a (red) cat"]))


# ---- clip skip ----------------------------------------------------------------------------------------------------
def hf_text_model(model):
    """transformers' CLIPTextModel with our tiny SD1 encoder's weights (diffusers' key conversion)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig as HFConfig, CLIPTextModel
    c = model.cond_stage_model.cfg
    ref = CLIPTextModel(HFConfig(vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.mlp_dim,
                                 num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                 max_position_embeddings=77, hidden_act="quick_gelu")).eval()
    ckpt = {"cond_stage_model." + k: v for k, v in model.cond_stage_model.state_dict().items()}
    state = convert_ldm_clip_checkpoint(ckpt)
    prefix = "" if "embeddings.token_embedding.weight" in ref.state_dict() else "text_model."
    ref.load_state_dict({prefix + k.removeprefix("text_model."): v for k, v in state.items()
                         if k != "text_projection.weight"}, strict=True)
    return ref


@pytest.mark.parametrize("skip", [1, 2, 3])
def test_clip_skip_matches_transformers_hidden_states(skip):
    cfg = C.ModelConfig(**{**SD1_TINY.__dict__, "cond_stage": C.CLIPTextConfig(width=32, layers=3, heads=4,
                                                                               mlp_dim=64)})
    model = tiny_model(cfg)
    ref = hf_text_model(model)
    configure(model, clip_skip=skip)
    tokens = model.cond_stage_model.get_tokenizer()(["a (castle) on a hill"])
    with torch.no_grad():
        context, _ = encode(model, LiteralPrompt("a (castle) on a hill"), "")
        out = ref(input_ids=tokens, output_hidden_states=True)
        final_ln = getattr(ref, "text_model", ref).final_layer_norm
        torch.testing.assert_close(context, final_ln(out.hidden_states[-skip]), atol=1e-5, rtol=0)


def test_clip_skip_on_sd2_counts_from_the_last_layer():
    model = tiny_model(SD2_TINY)       # layer "penultimate": the model's own choice is clip skip 2
    with torch.no_grad():
        native, _ = encode(model, "a cat", "")
        configure(model, clip_skip=2)
        assert torch.equal(encode(model, "a cat", "")[0], native)
        configure(model, clip_skip=1)
        enc = model.cond_stage_model
        tokens = enc.get_tokenizer()(["a cat"])
        torch.testing.assert_close(encode(model, "a cat", "")[0], enc(tokens, n_blocks=enc.cfg.layers))


def test_clip_skip_refused_where_meaningless():
    model = tiny_model(SD1_TINY)
    with pytest.raises(UsageError, match=r"1\.\.2"):
        configure(model, clip_skip=3)
    with pytest.raises(UsageError, match="CLIP"):
        configure(SimpleNamespace(cfg=SimpleNamespace(name="cin256"), cond_stage_model=None), clip_skip=2)


# ---- the BERT families: unknown words named, one window ------------------------------------------------------------
def words_model():
    from ldmcli.models.bert import BERTEmbedder
    vocab = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat", "red")
    enc = randomize_(BERTEmbedder(C.BERTConfig(vocab_size=len(vocab), max_seq_len=8, n_embed=16, n_layer=1,
                                               heads=2, dim_head=8, tokenizer="words", vocab=vocab)))
    return SimpleNamespace(cfg=SimpleNamespace(name="words"), cond_stage_model=enc.eval())


def test_unknown_words_are_named(caplog):
    model = words_model()
    with caplog.at_level(logging.WARNING, logger="ldmcli"), torch.no_grad():
        context, _ = encode(model, "a (red) zebra cat, purple", "")
    assert "zebra, purple" in caplog.text
    assert context.shape == (1, 8, 16)


def test_bert_window_cut_with_warning(caplog):
    model = words_model()
    enc = model.cond_stage_model
    with caplog.at_level(logging.WARNING, logger="ldmcli"), torch.no_grad():
        context, uncond = encode(model, "a cat a cat a red cat red BREAK cat", "")
        assert torch.equal(uncond, enc.encode([""]))
        assert torch.equal(context, enc.encode(["a cat a cat a red cat red cat"]))
    assert "BREAK ignored" in caplog.text and "last 3 token(s)" in caplog.text
    with pytest.raises(UsageError, match="clip-skip needs a CLIP"):
        configure(model, clip_skip=2)


def test_configure_without_addons_works_on_every_text_family():
    """A run (or job) that asks for neither clip skip nor embeddings configures any text model, BERT included."""
    model = words_model()
    setup = configure(model, syntax=False)
    assert setup.clip_skip is None and not setup.embeddings and model.cond_stage_model.prompt_setup is setup
