"""Condition encoders τθ: parity with transformers' CLIPTextModel and a naive x-transformers BERT; real-size layouts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldmcli.models.config import (BERTConfig, CLIPTextConfig, ClassEmbedderConfig, OpenCLIPTextConfig,
                           SpatialRescalerConfig)
from ldmcli.errors import UsageError
from ldmcli.models.encoders import (BERTEmbedder, ClassEmbedder, FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder,
                                    SpatialRescaler, build_cond_stage)
from ldmcli.loading.skeleton import meta_skeleton

SMALL_CLIP = dict(width=64, layers=3, heads=4, mlp_dim=256)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter ~ N(0, 0.3), LayerNorm scales around 1: no slot can hide behind a default init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            if isinstance(module.get_submodule(name.rsplit(".", 1)[0]), torch.nn.LayerNorm) and name.endswith("weight"):
                p.add_(1.0)
    return module.eval()


def random_tokens(vocab: int, length: int = 77, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_clip_text(act: str, layout: dict) -> torch.nn.Module:
    """transformers' CLIPTextModel loaded strictly from a diffusers-converted LDM state dict."""
    from transformers import CLIPTextConfig as HFConfig, CLIPTextModel

    cfg = HFConfig(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                   num_attention_heads=4, max_position_embeddings=77, hidden_act=act, attn_implementation="eager")
    model = CLIPTextModel(cfg).eval()
    # transformers >= 5 dropped the `text_model.` level of its module tree (MODELS.md §7.5)
    prefix = "" if "embeddings.token_embedding.weight" in model.state_dict() else "text_model."
    state = {prefix + k.removeprefix("text_model."): v for k, v in layout.items() if k != "text_projection.weight"}
    model.load_state_dict(state, strict=True)
    return model


def hf_hidden(model, tokens: torch.Tensor, layer: str) -> torch.Tensor:
    out = model(input_ids=tokens, output_hidden_states=True)
    if layer == "last":
        return out.last_hidden_state
    final_ln = getattr(model, "text_model", model).final_layer_norm
    return final_ln(out.hidden_states[-2])


@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_clip_text_matches_transformers(layer):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    ours = randomize(FrozenCLIPEmbedder(CLIPTextConfig(**SMALL_CLIP, layer=layer)))
    ckpt = {"cond_stage_model." + k: v for k, v in ours.state_dict().items()}
    ref = hf_clip_text("quick_gelu", convert_ldm_clip_checkpoint(ckpt))
    tokens = random_tokens(49408)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf_hidden(ref, tokens, layer), atol=1e-4, rtol=0)
        # prompts shorter than 77 tokens use the first positions, as HF does
        torch.testing.assert_close(ours(tokens[:, :20]), hf_hidden(ref, tokens[:, :20], layer), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer", ["penultimate", "last"])
def test_openclip_text_matches_transformers_gelu(layer):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    ours = randomize(FrozenOpenCLIPEmbedder(OpenCLIPTextConfig(**SMALL_CLIP, layer=layer)))
    ckpt = {"cond_stage_model." + k: v for k, v in ours.state_dict().items()}
    # diffusers splits in_proj into q/k/v by the text_projection width; its text_model argument is then unused
    ref = hf_clip_text("gelu", convert_open_clip_checkpoint(None, ckpt))
    tokens = random_tokens(49408)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf_hidden(ref, tokens, layer), atol=1e-4, rtol=0)


def naive_bert(state: dict, tokens: torch.Tensor, depth: int, heads: int = 8, dim_head: int = 64) -> torch.Tensor:
    """MODELS.md §6.1/§7.4 spelled out: embeddings, depth × (pre-norm attention, pre-norm FF), final LayerNorm."""
    def ln(x, key):
        return F.layer_norm(x, x.shape[-1:], state[key + ".weight"], state[key + ".bias"])

    def lin(x, key, bias=True):
        return x @ state[key + ".weight"].T + (state[key + ".bias"] if bias else 0)

    p = "transformer."
    x = state[p + "token_emb.weight"][tokens] + state[p + "pos_emb.emb.weight"][: tokens.shape[1]]
    b, n, _ = x.shape
    for i in range(depth):
        a, f = f"{p}attn_layers.layers.{2 * i}", f"{p}attn_layers.layers.{2 * i + 1}"
        h = ln(x, a + ".0")
        q, k, v = (lin(h, f"{a}.1.to_{c}", bias=False).view(b, n, heads, dim_head) for c in "qkv")
        weights = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) * dim_head ** -0.5, dim=-1)
        x = x + lin(torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, n, heads * dim_head), a + ".1.to_out")
        h = ln(x, f + ".0")
        x = x + lin(F.gelu(lin(h, f + ".1.net.0.0")), f + ".1.net.2")
    return ln(x, p + "norm")


def test_bert_matches_naive_reference():
    cfg = BERTConfig(vocab_size=300, max_seq_len=77, n_embed=48, n_layer=3, tokenizer="none")
    ours = randomize(BERTEmbedder(cfg))
    tokens = random_tokens(300)
    with torch.no_grad():
        expected = naive_bert(ours.state_dict(), tokens, depth=3)
        torch.testing.assert_close(ours(tokens), expected, atol=1e-4, rtol=0)
        assert ours(tokens).shape == (2, 77, 48)   # inner width 8×64 = 512 whatever n_embed is
    assert ours.state_dict()["transformer.attn_layers.layers.0.1.to_q.weight"].shape == (512, 48)


def test_class_embedder_and_spatial_rescaler():
    emb = randomize(ClassEmbedder(ClassEmbedderConfig(n_classes=1001, embed_dim=512)))
    ids = torch.tensor([3, 1000])
    assert torch.equal(emb(ids), emb.embedding.weight[ids][:, None])

    rescaler = randomize(SpatialRescaler(SpatialRescalerConfig()))
    onehot = F.one_hot(torch.randint(0, 182, (2, 64, 48)), 182).permute(0, 3, 1, 2).float()
    half = F.interpolate(F.interpolate(onehot, scale_factor=0.5, mode="bilinear"), scale_factor=0.5, mode="bilinear")
    expected = torch.einsum("oc,bchw->bohw", rescaler.channel_mapper.weight[:, :, 0, 0], half)
    out = rescaler(onehot)
    assert out.shape == (2, 3, 16, 12) and rescaler.channel_mapper.bias is None
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_encode_tokenizes_lazily():
    model = randomize(FrozenCLIPEmbedder(CLIPTextConfig(**SMALL_CLIP)))
    assert model.tokenizer is None
    context = model.encode(["a cat", ""])
    assert context.shape == (2, 77, 64) and model.tokenizer.pad_id == 49407
    torch.testing.assert_close(context, model(model.tokenizer(["a cat", ""])))
    assert "tokenizer" not in dict(model.named_modules())
    with pytest.raises(UsageError, match="--bert-vocab"):
        BERTEmbedder(BERTConfig(n_embed=16, n_layer=1)).encode(["a cat"])


def test_build_cond_stage_dispatch():
    assert isinstance(build_cond_stage(CLIPTextConfig(**SMALL_CLIP)), FrozenCLIPEmbedder)
    assert isinstance(build_cond_stage(OpenCLIPTextConfig(**SMALL_CLIP)), FrozenOpenCLIPEmbedder)
    assert isinstance(build_cond_stage(BERTConfig(n_embed=16, n_layer=1)), BERTEmbedder)
    assert isinstance(build_cond_stage(ClassEmbedderConfig()), ClassEmbedder)
    assert isinstance(build_cond_stage(SpatialRescalerConfig()), SpatialRescaler)
    for cfg in (None, "identity", "first_stage", "noise_augmentation"):
        assert build_cond_stage(cfg) is None
    with pytest.raises(UsageError, match="penultimate"):
        build_cond_stage(CLIPTextConfig(layer="first"))


# Real-size layouts on the meta device (no memory): key counts of MODELS.md §7.1, shapes of §7.4–7.7.
REAL_SIZE = {
    "sd1_clip": (CLIPTextConfig(), 196, 123_060_480),
    "sd2_openclip": (OpenCLIPTextConfig(), 294, None),
    "txt2img_large_bert": (BERTConfig(n_embed=1280, n_layer=32), 422, None),
    "layout_bert": (BERTConfig(vocab_size=8192, max_seq_len=92, n_embed=512, n_layer=16, tokenizer="none"), 214, None),
    "cin256_v2_class": (ClassEmbedderConfig(n_classes=1001), 1, 1001 * 512),
    "semantic_rescaler": (SpatialRescalerConfig(), 1, 3 * 182),
}


@pytest.mark.parametrize("name", list(REAL_SIZE))
def test_real_size_key_counts(name):
    cfg, n_keys, n_params = REAL_SIZE[name]
    with meta_skeleton():
        model = build_cond_stage(cfg)
    state = model.state_dict()
    assert len(state) == n_keys
    assert not any(k.endswith(("position_ids", "attn_mask")) for k in state)
    if n_params is not None:
        assert sum(p.numel() for p in model.parameters()) == n_params


def test_real_size_shapes():
    with meta_skeleton():
        sd1 = FrozenCLIPEmbedder(CLIPTextConfig()).state_dict()
        sd2 = FrozenOpenCLIPEmbedder(OpenCLIPTextConfig()).state_dict()
        bert = BERTEmbedder(BERTConfig()).state_dict()
    t = "transformer.text_model."
    assert sd1[t + "embeddings.token_embedding.weight"].shape == (49408, 768)
    assert sd1[t + "embeddings.position_embedding.weight"].shape == (77, 768)
    assert sd1[t + "encoder.layers.11.mlp.fc1.weight"].shape == (3072, 768)
    assert sd1[t + "final_layer_norm.bias"].shape == (768,)
    assert sd2["model.positional_embedding"].shape == (77, 1024)
    assert sd2["model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert sd2["model.transformer.resblocks.23.mlp.c_proj.weight"].shape == (1024, 4096)
    assert sd2["model.text_projection"].shape == (1024, 1024) and sd2["model.logit_scale"].shape == ()
    assert bert["transformer.attn_layers.layers.63.1.net.2.weight"].shape == (1280, 5120)
    assert bert["transformer.to_logits.weight"].shape == (30522, 1280)
