"""UNet tests: parity with diffusers' UNet2DConditionModel, ADM attention against a naive reference,
full-size parameter counts and key shapes of every family in MODELS.md §4, and half-precision forwards.

All CPU, float32 unless stated, seeded; full-size models are built on the meta device (no memory, no weights).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldmcli.models.config import UNetConfig
from ldmcli.models.attention import AttentionBlock, SpatialTransformer, attention
from ldmcli.models.unet import UNetModel, attention_heads
from ldmcli.models.unet_blocks import ResBlock, timestep_embedding
from ldmcli.loading.skeleton import meta_skeleton

PREFIX = "model.diffusion_model."


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights everywhere: norm gains around 1, biases and zero-init layers (proj_out,
    out_layers.3, out.2) non-zero, matrices ~ N(0, 1/fan_in) so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return model.eval()


# ---- Parity with diffusers (SpatialTransformer UNets) ----------------------------------------------------------------
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=2)
PARITY = {
    # SD1-style: conv proj_in/out, fixed num_heads, attention at both levels
    "sd1": UNetConfig(**TINY, attention_resolutions=(1, 2), num_heads=2, context_dim=32, legacy=False),
    # SD1-style, attention at ds 2 only (level 0 plain), wider context
    "sd1_level1": UNetConfig(**TINY, attention_resolutions=(2,), num_heads=4, context_dim=64, legacy=False),
    # SD2-style: Linear proj_in/out, num_head_channels (2 then 4 heads)
    "sd2": UNetConfig(**TINY, attention_resolutions=(1, 2), num_head_channels=16, context_dim=64,
                      use_linear_in_transformer=True, legacy=False),
    # x4-upscaler-style: 7 input channels (x + concat image), label_emb, attn1 → cross-attention on level 0
    "x4": UNetConfig(in_channels=7, **TINY, attention_resolutions=(1, 2), num_heads=2, context_dim=64,
                     use_linear_in_transformer=True, legacy=False, num_classes=1000,
                     disable_self_attentions=(True, False)),
}


def diffusers_twin(cfg: UNetConfig):
    """A diffusers UNet2DConditionModel of the same architecture (diffusers' `attention_head_dim` = head count)."""
    from diffusers import UNet2DConditionModel

    widths = [cfg.model_channels * m for m in cfg.channel_mult]
    attends = [2 ** level in cfg.attention_resolutions for level in range(len(widths))]
    return UNet2DConditionModel(
        sample_size=16, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks,
        cross_attention_dim=cfg.context_dim, transformer_layers_per_block=cfg.transformer_depth,
        attention_head_dim=tuple(attention_heads(cfg, w)[0] for w in widths),
        use_linear_projection=cfg.use_linear_in_transformer,
        only_cross_attention=tuple(cfg.disable_self_attentions or [False] * len(widths)),
        num_class_embeds=cfg.num_classes,
    ).eval()


def parity_error(cfg: UNetConfig, t: torch.Tensor) -> float:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ours = randomize_(UNetModel(cfg), seed=1)
    theirs = diffusers_twin(cfg)
    checkpoint = {PREFIX + k: v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, theirs.config), strict=True)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=g)
    context = torch.randn(2, 5, cfg.context_dim, generator=g)
    y = torch.tensor([3, 999]) if cfg.num_classes else None
    with torch.no_grad():
        a = ours(x, t, context=context, y=y)
        b = theirs(x, t, encoder_hidden_states=context, class_labels=y).sample
    assert a.shape == b.shape == (2, cfg.out_channels, 16, 16)
    assert a.abs().mean() > 0.1, "degenerate output: the comparison would prove nothing"
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(PARITY))
def test_parity_with_diffusers(name):
    err = parity_error(PARITY[name], torch.tensor([10, 981]))
    print(f"diffusers parity {name}: max abs err {err:.2e}")
    assert err <= 1e-4


def test_parity_with_diffusers_fractional_timesteps():
    """DPM-Solver and k-samplers evaluate the model at non-integer t."""
    err = parity_error(PARITY["sd2"], torch.tensor([0.37, 512.81]))
    print(f"diffusers parity fractional t: max abs err {err:.2e}")
    assert err <= 1e-4


def test_timestep_embedding_cos_first_and_fractional():
    t = torch.tensor([0.0, 2.5])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, expected)
    assert torch.equal(emb[0, :4], torch.ones(4))      # cos(0) = 1 comes first


# ---- ADM AttentionBlock and ResBlock variants (no diffusers equivalent) ----------------------------------------------
def naive_attention_block(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """MODELS.md §7.2 QKVAttentionLegacy, written out: qkv channels grouped per head [q_h, k_h, v_h],
    q and k each scaled by ch^−1/4, softmax over keys."""
    b, c, *spatial = x.shape
    xf = x.reshape(b, c, -1)
    normed = F.group_norm(xf, 32, block.norm.weight, block.norm.bias, eps=1e-5)
    qkv = F.conv1d(normed, block.qkv.weight, block.qkv.bias)
    ch = c // block.num_heads
    heads = []
    for head in range(block.num_heads):
        q, k, v = qkv[:, 3 * ch * head:3 * ch * (head + 1)].split(ch, dim=1)
        scale = ch ** -0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        heads.append(torch.einsum("bts,bcs->bct", weight, v))
    h = F.conv1d(torch.cat(heads, dim=1), block.proj_out.weight, block.proj_out.bias)
    return (xf + h).reshape(b, c, *spatial)


@pytest.mark.parametrize("num_heads,num_head_channels,expected_heads", [(4, -1, 4), (1, 32, 2), (8, 16, 4)])
def test_attention_block_matches_naive_reference(num_heads, num_head_channels, expected_heads):
    block = randomize_(AttentionBlock(64, num_heads, num_head_channels), seed=3)
    assert block.num_heads == expected_heads
    x = torch.randn(2, 64, 6, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(block(x), naive_attention_block(block, x), atol=1e-5, rtol=1e-5)


ADM = dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, use_spatial_transformer=False)


@pytest.mark.parametrize("cfg", [
    UNetConfig(in_channels=6, out_channels=3, **ADM, attention_resolutions=(2, 4), num_head_channels=32),
    UNetConfig(in_channels=7, out_channels=3, **ADM, attention_resolutions=(2,), num_heads=2, resblock_updown=True),
], ids=["head_channels", "num_heads_updown"])
def test_adm_unet_matches_naive_attention(cfg, monkeypatch):
    """A whole AttentionBlock UNet, once with our SDPA blocks and once with the naive reference swapped in."""
    model = randomize_(UNetModel(cfg), seed=5)
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([1, 700])
    with torch.no_grad():
        ours = model(x, t)
        monkeypatch.setattr(AttentionBlock, "forward", naive_attention_block)
        reference = model(x, t)
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) > 1
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_resblock_updown_scale_shift_matches_formula():
    """ResBlock(down=True, use_scale_shift_norm): GN+SiLU, avg-pool h and x, conv; GN(h)·(1+scale)+shift; conv."""
    block = randomize_(ResBlock(32, 16, 64, use_scale_shift_norm=True, down=True), seed=7)
    g = torch.Generator().manual_seed(8)
    x, emb = torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 16, generator=g)
    il, el, ol = block.in_layers, block.emb_layers, block.out_layers
    with torch.no_grad():
        h = il[2](F.avg_pool2d(F.silu(il[0](x)), 2))
        scale, shift = el[1](F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = ol[3](F.silu(ol[0](h) * (1 + scale) + shift))
        expected = block.skip_connection(F.avg_pool2d(x, 2)) + h
        torch.testing.assert_close(block(x, emb), expected)
    up = randomize_(ResBlock(32, 16, use_scale_shift_norm=True, up=True), seed=9)
    assert up(x, emb).shape == (2, 32, 16, 16)


def test_resblock_updown_scale_shift_unet_smoke():
    """lsun_churches-style: every resampler is a ResBlock, emb_layers emit 2·C (scale and shift)."""
    cfg = UNetConfig(in_channels=4, out_channels=4, **ADM, attention_resolutions=(1, 2), num_heads=2,
                     use_scale_shift_norm=True, resblock_updown=True)
    model = randomize_(UNetModel(cfg), seed=10)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["input_blocks.3.0.emb_layers.1.weight"] == (64, 128)      # ResBlock(down) at index 3
    assert not any(".op." in k or k.endswith(".conv.weight") for k in shapes)
    assert shapes["output_blocks.2.1.in_layers.2.weight"] == (64, 64, 3, 3)  # ResBlock(up) after no attention
    assert shapes["output_blocks.5.2.emb_layers.1.weight"] == (128, 128)     # ResBlock(up) after attention
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    out = model(x, torch.tensor([500.5])).detach()
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_class_labels_required_exactly_when_configured():
    model = UNetModel(PARITY["x4"])
    x, context = torch.zeros(1, 7, 8, 8), torch.zeros(1, 3, 64)
    with pytest.raises(ValueError):
        model(x, torch.tensor([1]), context=context)
    with pytest.raises(ValueError):
        UNetModel(PARITY["sd2"])(torch.zeros(1, 4, 8, 8), torch.tensor([1]), context=context, y=torch.tensor([1]))


# ---- Full-size builds on the meta device: every family of MODELS.md §4 (configs from the YAMLs' unet_config) ---------
def _sd(in_channels, **kw):
    return UNetConfig(in_channels=in_channels, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4),
                      attention_resolutions=(4, 2, 1), legacy=False, **kw)


_SD1 = dict(num_heads=8, context_dim=768)
_SD2 = dict(num_head_channels=64, context_dim=1024, use_linear_in_transformer=True)
_AB = dict(use_spatial_transformer=False)
FAMILIES = {  # name: (config, "UNet params" of MODELS.md §4)
    # LDM:configs/latent-diffusion/txt2img-1p4B-eval.yaml
    "ldm-txt2img-large": (UNetConfig(4, 4, 320, (1, 2, 4, 4), 2, (4, 2, 1), num_heads=8, context_dim=1280,
                                     legacy=False), 872_300_484),
    # LDM:models/ldm/text2img256/config.yaml
    "ldm-text2img256": (UNetConfig(3, 3, 192, (1, 2, 3, 5), 2, (8, 4, 2), num_head_channels=32, context_dim=640),
                        403_623_939),
    # LDM:models/ldm/bsr_sr/config.yaml
    "ldm-bsr_sr": (UNetConfig(6, 3, 160, (1, 2, 2, 4), 2, (16, 8), num_head_channels=32, **_AB), 113_622_563),
    # LDM:models/ldm/inpainting_big/config.yaml
    "ldm-inpainting_big": (UNetConfig(7, 3, 256, (1, 2, 3, 4), 2, (8, 4, 2), num_heads=8, resblock_updown=True, **_AB),
                           387_245_827),
    # LDM:models/ldm/layout2img-openimages256/config.yaml
    "ldm-layout2img": (UNetConfig(3, 3, 128, (1, 2, 3, 4), 2, (8, 4, 2), num_head_channels=32, transformer_depth=3,
                                  context_dim=512), 246_277_379),
    # LDM:models/ldm/semantic_synthesis{256,512}/config.yaml (ds 32/16/8 never occur: middle block only)
    "ldm-semantic": (UNetConfig(6, 3, 128, (1, 4, 8), 2, (32, 16, 8), num_heads=8, **_AB), 215_229_315),
    # LDM:models/ldm/cin256/config.yaml
    "ldm-cin256": (UNetConfig(4, 4, 256, (1, 2, 4), 2, (4, 2, 1), num_head_channels=32, context_dim=512),
                   394_984_196),
    # LDM:configs/latent-diffusion/cin256-v2.yaml
    "ldm-cin256-v2": (UNetConfig(3, 3, 192, (1, 2, 3, 5), 2, (8, 4, 2), num_heads=1, context_dim=512), 400_920_579),
    # LDM:models/ldm/{celeba256,ffhq256,lsun_beds256}/config.yaml
    "ldm-celeba-ffhq-beds": (UNetConfig(3, 3, 224, (1, 2, 3, 4), 2, (8, 4, 2), num_head_channels=32, **_AB),
                             274_056_163),
    # LDM:models/ldm/lsun_churches256/config.yaml
    "ldm-churches": (UNetConfig(4, 4, 192, (1, 2, 2, 4, 4), 2, (1, 2, 4, 8), num_heads=8, use_scale_shift_norm=True,
                                resblock_updown=True, **_AB), 294_966_916),
    # SD1:configs/stable-diffusion/v1-inference.yaml, v1-inpainting-inference.yaml
    "sd1": (_sd(4, **_SD1), 859_520_964),
    "sd1-inpainting": (_sd(9, **_SD1), 859_535_364),
    # SD2:configs/stable-diffusion/v2-inference(-v).yaml, v2-inpainting-inference.yaml, v2-midas-inference.yaml
    "sd2": (_sd(4, **_SD2), 865_910_724),
    "sd2-inpainting": (_sd(9, **_SD2), 865_925_124),
    "sd2-depth": (_sd(5, **_SD2), 865_913_604),
    # SD2:configs/stable-diffusion/x4-upscaling.yaml
    "sd-x4-upscaler": (UNetConfig(7, 4, 256, (1, 2, 2, 4), 2, (2, 4, 8), num_heads=8, context_dim=1024,
                                  use_linear_in_transformer=True, legacy=False, num_classes=1000,
                                  disable_self_attentions=(True, True, True, False)), 473_398_020),
}


def meta_model(name: str) -> UNetModel:
    with meta_skeleton():
        return UNetModel(FAMILIES[name][0])


def shapes_of(model: UNetModel) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_full_size_parameter_count(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == FAMILIES[name][1]


def heads_of(model: UNetModel, block: str) -> tuple:
    """(heads, d_head) of the attention layer `block` (e.g. "input_blocks.1.1")."""
    layer = model.get_submodule(block)
    if isinstance(layer, AttentionBlock):
        return layer.num_heads, layer.qkv.in_channels // layer.num_heads
    attn = layer.transformer_blocks[0].attn1
    return attn.heads, attn.to_q.out_features // attn.heads


def attending(blocks) -> list:
    """Indices of the blocks that hold an attention layer."""
    return [i for i, b in enumerate(blocks) if any(isinstance(m, (SpatialTransformer, AttentionBlock)) for m in b)]


def test_sd1_layout_and_keys():
    """MODELS.md §7.2: SD block numbering, ST positions, ResBlock/Downsample/Upsample keys."""
    model = meta_model("sd1")
    s = shapes_of(model)
    assert len(model.input_blocks) == 12 and len(model.output_blocks) == 12
    assert attending(model.input_blocks) == [1, 2, 4, 5, 7, 8]
    assert attending(model.output_blocks) == list(range(3, 12))
    expected = {
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.in_layers.2.weight": (640, 320, 3, 3),
        "input_blocks.4.0.emb_layers.1.weight": (640, 1280),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "output_blocks.0.0.in_layers.0.weight": (2560,),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "out.2.weight": (4, 320, 3, 3),
        "time_embed.0.weight": (1280, 320),
        "time_embed.2.weight": (1280, 1280),
        "input_blocks.1.1.norm.weight": (320,),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "input_blocks.1.1.proj_out.weight": (320, 320, 1, 1),
        "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight": (320, 320),
        "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias": (320,),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
        "input_blocks.1.1.transformer_blocks.0.norm3.weight": (320,),
    }
    assert {k: s.get(k) for k in expected} == expected
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" not in s
    assert "input_blocks.1.0.skip_connection.weight" not in s           # Cin == Cout: identity skip
    assert shapes_of(meta_model("sd1-inpainting"))["input_blocks.0.0.weight"] == (320, 9, 3, 3)
    assert [heads_of(model, f"input_blocks.{i}.1") for i in (1, 4, 7)] == [(8, 40), (8, 80), (8, 160)]


def test_sd2_linear_proj_and_64_dim_heads():
    model = meta_model("sd2")
    s = shapes_of(model)
    assert s["input_blocks.1.1.proj_in.weight"] == (320, 320)
    assert s["output_blocks.11.1.proj_out.weight"] == (320, 320)
    assert s["middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 1024)
    assert [heads_of(model, b) for b in ("input_blocks.1.1", "input_blocks.4.1", "input_blocks.7.1",
                                         "middle_block.1")] == [(5, 64), (10, 64), (20, 64), (20, 64)]


def test_x4_upscaler_label_emb_and_disabled_self_attention():
    """x4: attention at levels 1–3 only; disable_self_attentions [T,T,T,F] makes attn1 a cross-attention on
    levels 1–2 (level 0 has no attention at all, level 3's 1024 channels equal the 1024 context width)."""
    model = meta_model("sd-x4-upscaler")
    s = shapes_of(model)
    assert s["label_emb.weight"] == (1000, 1024)
    assert s["input_blocks.0.0.weight"] == (256, 7, 3, 3)
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.")) for k in s)
    for block in ("input_blocks.4.1", "input_blocks.7.1", "output_blocks.5.1", "output_blocks.8.1"):
        assert s[f"{block}.transformer_blocks.0.attn1.to_k.weight"] == (512, 1024)
        assert model.get_submodule(block).transformer_blocks[0].disable_self_attn
    assert not model.get_submodule("input_blocks.10.1").transformer_blocks[0].disable_self_attn
    assert not model.get_submodule("middle_block.1").transformer_blocks[0].disable_self_attn
    assert s["input_blocks.4.1.proj_in.weight"] == (512, 512)
    assert heads_of(model, "input_blocks.4.1") == (8, 64)


def test_ldm_family_layouts():
    s = shapes_of(meta_model("ldm-churches"))
    assert max(int(k.split(".")[1]) for k in s if k.startswith("input_blocks")) == 14
    assert s["input_blocks.3.0.emb_layers.1.weight"] == (384, 768)        # ResBlock(down), scale-shift 2·C
    assert s["input_blocks.1.1.qkv.weight"] == (576, 192, 1)             # AB at ds 1
    semantic = meta_model("ldm-semantic")
    assert attending(semantic.input_blocks) == attending(semantic.output_blocks) == []
    assert shapes_of(semantic)["middle_block.1.qkv.weight"] == (3072, 1024, 1)
    assert heads_of(semantic, "middle_block.1") == (8, 128)
    bsr = meta_model("ldm-bsr_sr")
    assert attending(bsr.input_blocks) == [10, 11]
    assert heads_of(bsr, "input_blocks.10.1") == (20, 32)
    inpaint = meta_model("ldm-inpainting_big")
    assert heads_of(inpaint, "input_blocks.4.1") == (8, 64)
    upsampler = inpaint.get_submodule("output_blocks.2.2")                   # after the ds-8 AttentionBlock
    assert isinstance(upsampler, ResBlock) and upsampler.updown
    assert heads_of(meta_model("ldm-cin256-v2"), "input_blocks.10.1") == (1, 960)
    assert heads_of(meta_model("ldm-txt2img-large"), "input_blocks.7.1") == (8, 160)
    assert heads_of(meta_model("ldm-text2img256"), "input_blocks.7.1") == (18, 32)
    layout = shapes_of(meta_model("ldm-layout2img"))
    assert layout["input_blocks.4.1.transformer_blocks.2.attn2.to_k.weight"] == (256, 512)
    assert layout["input_blocks.4.1.proj_in.weight"] == (256, 256, 1, 1)


# ---- Half precision --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
@pytest.mark.parametrize("name", ["sd2", "x4", "adm"])
def test_half_precision_forward_close_to_fp32(name, dtype, tol):
    cfg = PARITY.get(name) or UNetConfig(in_channels=4, out_channels=4, **ADM, attention_resolutions=(2, 4),
                                         num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True)
    model = randomize_(UNetModel(cfg), seed=12)
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=g)
    context = torch.randn(2, 5, cfg.context_dim, generator=g) if cfg.context_dim else None
    y = torch.tensor([20, 350]) if cfg.num_classes else None
    t = torch.tensor([3.5, 870.0])
    with torch.no_grad():
        ref = model(x, t, context=context, y=y)
        out = model.to(dtype)(x.to(dtype), t, context=context, y=y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
    print(f"{name} {dtype}: max abs err / max |out| = {err:.2e}")
    assert err < tol


def test_half_attention_does_not_overflow():
    """Logits q·kᵀ of ~5e6 overflow fp16 (max 65504) when formed unscaled, as SD 2.1 did (MODELS.md §11 item 3)."""
    g = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=g) * scale for scale in (300, 300, 1))
    assert not torch.isfinite(q.half() @ k.half().transpose(-1, -2)).all()
    ref = attention(q, k, v)
    out = attention(q.half(), k.half(), v.half())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
