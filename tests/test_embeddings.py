"""Textual inversion: the conditioning of prompts that use an embedding equals diffusers' `load_textual_inversion`
on the same random-weight CLIP text model, for A1111 .pt/.safetensors and diffusers files, single- and
multi-vector, SD1 (CLIP) and SD2 (OpenCLIP); bad files refused in one line."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ldmcli.errors import InputError, UsageError
from ldmcli.prompts import configure, encode
from ldmcli.prompts.embeddings import embedding_files, load_embedding, load_embeddings
from test_tokenizers import hf_clip  # noqa: F401  (the transformers CLIPTokenizer fixture)
from tiny import SD1_TINY, SD2_TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def write(path, vectors, layout):
    """An embedding file in one of the layouts found in the wild."""
    if layout == "a1111_pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": path.stem,
                    "step": 3000, "sd_checkpoint": "abc123", "sd_checkpoint_name": "model"}, path)
    elif layout == "a1111_safetensors":
        save_file({"emb_params": vectors.contiguous()}, str(path))
    elif layout == "diffusers_bin":
        torch.save({f"<{path.stem}>": vectors[0] if len(vectors) == 1 else vectors}, path)
    return path


def diffusers_conditioning(model, tokenizer, path, token, prompt, layer_from_end=1):
    """The reference: transformers' CLIPTextModel with the model's weights, the embedding added by diffusers."""
    from diffusers.loaders import TextualInversionLoaderMixin
    from test_prompts import hf_text_model

    class Pieces(TextualInversionLoaderMixin):      # the two components load_textual_inversion touches
        hf_device_map = None
        components: dict = {}

    text_model = hf_text_model(model)
    tokenizer = copy.deepcopy(tokenizer)    # load_textual_inversion adds the token to it
    Pieces().load_textual_inversion(str(path), token=token, tokenizer=tokenizer, text_encoder=text_model)
    prompt = Pieces().maybe_convert_prompt(prompt, tokenizer)
    ids = tokenizer(prompt, truncation=True, max_length=77).input_ids
    pad = model.cond_stage_model.get_tokenizer().pad_id
    ids = torch.tensor([ids + [pad] * (77 - len(ids))])
    out = text_model(input_ids=ids, output_hidden_states=True)
    return getattr(text_model, "text_model", text_model).final_layer_norm(out.hidden_states[-layer_from_end])


@pytest.mark.parametrize("layout, suffix, n", [("a1111_pt", ".pt", 1), ("a1111_safetensors", ".safetensors", 3),
                                               ("diffusers_bin", ".bin", 1), ("diffusers_bin", ".bin", 2)])
def test_sd1_matches_diffusers(tmp_path, hf_clip, layout, suffix, n):  # noqa: F811
    model = tiny_model(SD1_TINY)
    vectors = torch.randn(n, 32, generator=torch.Generator().manual_seed(n))
    path = write(tmp_path / f"sksdog{suffix}", vectors, layout)
    configure(model, embeddings=[load_embedding(path)])
    prompt = "a photo of sksdog, on the beach"
    with torch.no_grad():
        ours, _ = encode(model, prompt, "")
        ref = diffusers_conditioning(model, hf_clip, path, "sksdog", prompt)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        # a prompt without the token is untouched
        assert torch.equal(encode(model, "a photo of a dog", "")[0], model.get_learned_conditioning(["a photo of a dog"]))


def test_sd2_openclip_embedding_matches_diffusers(tmp_path, hf_clip):  # noqa: F811
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig as HFConfig, CLIPTextModel
    model = tiny_model(SD2_TINY)
    path = write(tmp_path / "vgstylx.safetensors", torch.randn(2, 32, generator=torch.Generator().manual_seed(7)),
                 "a1111_safetensors")
    configure(model, embeddings=[load_embedding(path)])

    import test_prompts
    c = model.cond_stage_model.cfg

    def openclip_as_hf(_):
        ref = CLIPTextModel(HFConfig(vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.mlp_dim,
                                     num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                     max_position_embeddings=77, hidden_act="gelu")).eval()
        ckpt = {"cond_stage_model." + k: v for k, v in model.cond_stage_model.state_dict().items()}
        state = convert_open_clip_checkpoint(None, ckpt)
        prefix = "" if "embeddings.token_embedding.weight" in ref.state_dict() else "text_model."
        ref.load_state_dict({prefix + k.removeprefix("text_model."): v for k, v in state.items()
                             if k != "text_projection.weight"}, strict=True)
        return ref
    original, test_prompts.hf_text_model = test_prompts.hf_text_model, openclip_as_hf
    try:
        with torch.no_grad():
            ours, _ = encode(model, "a castle in vgstylx style", "")
            ref = diffusers_conditioning(model, hf_clip, path, "vgstylx", "a castle in vgstylx style", 2)
    finally:
        test_prompts.hf_text_model = original
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_weighted_embedding_and_hash(tmp_path):
    model = tiny_model(SD1_TINY)
    path = write(tmp_path / "sksdog.pt", torch.randn(2, 32), "a1111_pt")
    emb = load_embedding(path)
    import hashlib
    assert emb.name == "sksdog" and emb.hash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    configure(model, embeddings=[emb])
    with torch.no_grad():
        plain, _ = encode(model, "a sksdog", "")
        weighted, _ = encode(model, "a (sksdog:1.4)", "")
    assert plain.shape == weighted.shape and not torch.allclose(plain, weighted)


def test_wrong_width_refused(tmp_path):
    model = tiny_model(SD1_TINY)
    emb = load_embedding(write(tmp_path / "wide.pt", torch.randn(1, 1024), "a1111_pt"))
    with pytest.raises(UsageError, match="1024-d vectors but tiny-sd1's text encoder takes 32-d"):
        configure(model, embeddings=[emb])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_bad_files_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "x": Evil()}, evil)
    with pytest.raises(InputError, match="only weights are loaded"):
        load_embedding(evil)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="neither safetensors nor a torch zip"):
        load_embedding(legacy)
    truncated = tmp_path / "cut.safetensors"
    save_file({"emb_params": torch.zeros(2, 4)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(InputError, match="cannot read embedding"):
        load_embedding(truncated)
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2, 4), "b": torch.zeros(1)}, str(other))
    with pytest.raises(InputError, match="not a textual-inversion embedding"):
        load_embedding(other)
    with pytest.raises(InputError, match="not found"):
        load_embedding(tmp_path / "missing.pt")


def test_embedding_dir_and_duplicates(tmp_path):
    for name in ("b.pt", "a.safetensors", "c.bin"):
        write(tmp_path / name, torch.randn(1, 8), {"pt": "a1111_pt", "safetensors": "a1111_safetensors",
                                                    "bin": "diffusers_bin"}[name.split(".")[1]])
    (tmp_path / "notes.txt").write_text("x")
    paths = embedding_files(folders=[str(tmp_path)])
    assert [p.name for p in paths] == ["a.safetensors", "b.pt", "c.bin"]
    assert [e.name for e in load_embeddings(paths)] == ["a", "b", "c"]
    with pytest.raises(InputError, match="two embeddings are called 'a'"):
        load_embeddings(paths + [tmp_path / "a.safetensors"])
