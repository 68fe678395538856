"""First-stage autoencoders: parity with diffusers, full-size shapes on meta, strict loading, tiling."""
from __future__ import annotations

import re

import pytest
import torch

from ldmcli.models.config import AutoencoderConfig
from ldmcli.models.autoencoder import AutoencoderKL, DiagonalGaussian, VQModel, build_first_stage
from ldmcli.sampling.tiling import blend_plan, decode_tiled, encode_tiled
from ldmcli.loading.skeleton import meta_skeleton

# Small configs: ch 32 keeps GroupNorm(32) valid; resolution 32 with f2 puts level 1 at nominal size 16.
SMALL_KL = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), resolution=32)
SMALL_KL_ATTN = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), resolution=32,
                                  attn_resolutions=(16,))
SMALL_VQ = AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), resolution=32,
                             double_z=False, n_embed=64, attn_resolutions=(16,))
SMALL_VQ_NOATTN = AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), resolution=32,
                                    double_z=False, n_embed=64, attn_type="none")

# Full-size first stages, transcribed from the YAMLs (ddconfig + embed_dim / n_embed) named in the comments.
FULL = {
    # LDM:models/first_stage_models/kl-f8/config.yaml (= SD v1/v2 first_stage_config)
    "kl-f8": (AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch_mult=(1, 2, 4, 4)), 83_653_863),
    # SD2:configs/stable-diffusion/x4-upscaling.yaml
    "kl-f4-4ch": (AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch_mult=(1, 2, 4)), 55_325_927),
    # LDM:models/first_stage_models/vq-f4/config.yaml
    "vq-f4": (AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch_mult=(1, 2, 4), double_z=False,
                                n_embed=8192), 55_322_782),
    # LDM:models/first_stage_models/vq-f4-noattn/config.yaml
    "vq-f4-noattn": (AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch_mult=(1, 2, 4), double_z=False,
                                       n_embed=8192, attn_type="none"), 53_219_486),
    # LDM:models/first_stage_models/vq-f8/config.yaml
    "vq-f8": (AutoencoderConfig(kind="vq", embed_dim=4, z_channels=4, ch_mult=(1, 2, 2, 4), double_z=False,
                                n_embed=16384, attn_resolutions=(32,)), 67_717_295),
}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial seeded weights: convs N(0, 0.05²), biases N(0, 0.05²), GroupNorm scale 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("embedding.weight"):
                p.copy_(noise)
            elif p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
    return model.eval()


def _image(cfg: AutoencoderConfig, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, cfg.in_channels, size, size, generator=g) * 2 - 1


# --- key mapping ldmcli (= CompVis) -> diffusers, for the VQ model and the KL level attentions -----------------

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _to_diffusers(sd: dict, n_levels: int) -> dict:
    """CompVis first-stage keys -> diffusers `Encoder`/`Decoder` keys (decoder levels are numbered in reverse)."""
    out = {}
    for key, value in sd.items():
        new = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.down_blocks.\1.", key)
        new = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up_blocks.{n_levels - 1 - int(m[1])}.", new)
        new = re.sub(r"\.block\.(\d+)\.", r".resnets.\1.", new).replace("nin_shortcut", "conv_shortcut")
        new = new.replace(".downsample.", ".downsamplers.0.").replace(".upsample.", ".upsamplers.0.")
        new = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", new)
        new = new.replace(".mid.attn_1.", ".mid_block.attentions.0.").replace(".attn.", ".attentions.")
        new = re.sub(r"\.norm_out\.", ".conv_norm_out.", new)
        m = re.match(r"(.*\.attentions\.\d+\.)(norm|q|k|v|proj_out)\.(weight|bias)$", new)
        if m:
            new = f"{m[1]}{_ATTN[m[2]]}.{m[3]}"
            if m[2] != "norm" and value.ndim == 4:
                value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[new] = value
    return out


def _diffusers_config(cfg: AutoencoderConfig, kind: str) -> dict:
    sizes = [cfg.resolution // 2 ** i for i in range(len(cfg.ch_mult))]
    attn = [s in cfg.attn_resolutions and cfg.attn_type != "none" for s in sizes]
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_ch,
        down_block_types=[f"{'Attn' if a else ''}DownEncoderBlock2D" for a in attn],
        up_block_types=[f"{'Attn' if a else ''}UpDecoderBlock2D" for a in reversed(attn)],
        block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels, norm_num_groups=32, sample_size=cfg.resolution,
        mid_block_add_attention=cfg.attn_type != "none",
        **({"num_vq_embeddings": cfg.n_embed, "vq_embed_dim": cfg.embed_dim} if kind == "vq" else {}),
    )


# --- parity ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [SMALL_KL, SMALL_KL_ATTN], ids=["mid-attn", "level-attn"])
def test_kl_matches_diffusers(cfg):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ours = _randomize(AutoencoderKL(cfg))
    config = _diffusers_config(cfg, "kl")
    checkpoint = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    converted = convert_ldm_vae_checkpoint(checkpoint, config)
    # The converter leaves level attentions (`down.{i}.attn.*`, `up.{i}.attn.*`) unmapped; map those ourselves.
    level_attn = {k: v for k, v in converted.items() if re.search(r"\.(down|up)\.\d+\.attn\.", k)}
    converted = {k: v for k, v in converted.items() if k not in level_attn}
    converted.update(_to_diffusers(level_attn, len(cfg.ch_mult)))
    theirs = diffusers.AutoencoderKL(**config).eval()
    theirs.load_state_dict(converted, strict=True)

    x = _image(cfg)
    with torch.no_grad():
        post, ref = ours.encode(x), theirs.encode(x).latent_dist
        z = post.mean
        errors = {"mean": (post.mean - ref.mean).abs().max().item(),
                  "logvar": (post.logvar - ref.logvar).abs().max().item(),
                  "decode": (ours.decode(z) - theirs.decode(z).sample).abs().max().item()}
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("cfg", [SMALL_VQ, SMALL_VQ_NOATTN], ids=["level-attn", "noattn"])
def test_vq_matches_diffusers(cfg):
    diffusers = pytest.importorskip("diffusers")
    ours = _randomize(VQModel(cfg))
    theirs = diffusers.VQModel(**_diffusers_config(cfg, "vq")).eval()
    theirs.load_state_dict(_to_diffusers(ours.state_dict(), len(cfg.ch_mult)), strict=True)

    x = _image(cfg)
    with torch.no_grad():
        # Codebook = jittered encoder outputs, so re-quantisation picks among many nearby codes (a N(0,1) codebook
        # far from h would collapse onto the two or three smallest-norm entries).
        g = torch.Generator().manual_seed(2)
        vectors = ours.encode(x).permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
        codebook = vectors[torch.randperm(len(vectors), generator=g)[:cfg.n_embed]]
        codebook = codebook + 0.01 * torch.randn(codebook.shape, generator=g)
        ours.quantize.embedding.weight.copy_(codebook)
        theirs.quantize.embedding.weight.copy_(codebook)
        h, h_ref = ours.encode(x), theirs.encode(x).latents
        assert ours.quantize.indices(h).unique().numel() >= cfg.n_embed // 2
        errors = {"encode": (h - h_ref).abs().max().item(),
                  "decode": (ours.decode(h) - theirs.decode(h, force_not_quantize=False).sample).abs().max().item(),
                  "decode_unquantized": (ours.decode(h, force_not_quantize=True)
                                         - theirs.decode(h, force_not_quantize=True).sample).abs().max().item()}
    assert max(errors.values()) <= 1e-4, errors


def test_vq_quantize_picks_nearest_code():
    model = _randomize(VQModel(SMALL_VQ))
    h = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    h_q = model.quantize_latent(h)
    codebook = model.quantize.embedding.weight.detach()
    flat = h.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = codebook[torch.cdist(flat, codebook).argmin(1)].reshape(2, 5, 7, 3).permute(0, 3, 1, 2)
    assert torch.equal(h_q, expected)
    assert torch.equal(model.quantize_latent(h_q), h_q)  # codebook vectors are fixed points


def test_diagonal_gaussian():
    params = torch.randn(2, 8, 4, 4) * 30  # logvar well outside [-30, 20] somewhere
    post = DiagonalGaussian(params)
    assert post.logvar.min() >= -30 and post.logvar.max() <= 20
    assert torch.equal(post.mode(), params[:, :4])
    assert torch.allclose(post.std, torch.exp(0.5 * post.logvar))
    a = post.sample(torch.Generator().manual_seed(0))
    b = post.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 4, 4, 4) and not torch.equal(a, post.mean)


# --- full-size structure on the meta device --------------------------------------------------------------------

def _shapes(cfg: AutoencoderConfig) -> dict:
    with meta_skeleton():
        model = build_first_stage(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_parameter_counts(name):
    cfg, expected = FULL[name]
    with meta_skeleton():
        model = build_first_stage(cfg)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert all(p.is_meta for p in model.parameters())


def test_full_size_key_layout():
    kl = _shapes(FULL["kl-f8"][0])
    assert kl["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert kl["encoder.conv_out.weight"] == (8, 512, 3, 3)
    assert kl["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert kl["encoder.down.2.downsample.conv.weight"] == (512, 512, 3, 3)
    assert "encoder.down.3.downsample.conv.weight" not in kl
    assert kl["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert kl["decoder.conv_in.weight"] == (512, 4, 3, 3)
    assert kl["decoder.up.1.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert kl["decoder.up.0.block.2.conv2.weight"] == (128, 128, 3, 3)
    assert kl["decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in kl
    assert kl["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert kl["quant_conv.weight"] == (8, 8, 1, 1) and kl["post_quant_conv.weight"] == (4, 4, 1, 1)
    assert not any(".attn." in k for k in kl)

    vq4 = _shapes(FULL["vq-f4"][0])
    assert vq4["quantize.embedding.weight"] == (8192, 3)
    assert vq4["encoder.conv_out.weight"] == (3, 512, 3, 3) and vq4["quant_conv.weight"] == (3, 3, 1, 1)
    assert "encoder.mid.attn_1.q.weight" in vq4

    noattn = _shapes(FULL["vq-f4-noattn"][0])
    assert not any("attn" in k for k in noattn)

    vq8 = _shapes(FULL["vq-f8"][0])
    assert vq8["quantize.embedding.weight"] == (16384, 4)
    for prefix in ("encoder.down.3.attn.0", "encoder.down.3.attn.1", "decoder.up.3.attn.2"):
        assert vq8[f"{prefix}.q.weight"] == (512, 512, 1, 1)
    assert not any(re.match(r"(encoder\.down|decoder\.up)\.[012]\.attn", k) for k in vq8)

    assert _shapes(FULL["kl-f4-4ch"][0])["encoder.conv_out.weight"] == (8, 512, 3, 3)


@pytest.mark.parametrize("cfg", [SMALL_KL_ATTN, SMALL_VQ], ids=["kl", "vq"])
def test_meta_build_then_strict_assign_load(cfg):
    reference = _randomize(build_first_stage(cfg))
    with meta_skeleton():
        model = build_first_stage(cfg)
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)
    model.eval()
    assert not any(t.is_meta for t in model.state_dict().values())
    x = _image(cfg)
    with torch.no_grad():
        h = model.encode(x)
        h = h.mean if isinstance(h, DiagonalGaussian) else h
        h_ref = reference.encode(x)
        h_ref = h_ref.mean if isinstance(h_ref, DiagonalGaussian) else h_ref
        assert torch.equal(h, h_ref) and torch.equal(model.decode(h), reference.decode(h))


def test_fp16_weights_stay_fp16():
    model = _randomize(AutoencoderKL(SMALL_KL)).half()
    assert all(p.dtype == torch.float16 for p in model.parameters())
    with torch.no_grad():
        out = model.decode(torch.randn(1, 4, 8, 8).half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_bad_configs_fail_loudly():
    with pytest.raises(ValueError):
        build_first_stage(AutoencoderConfig(kind="gan"))
    with pytest.raises(ValueError):
        build_first_stage(AutoencoderConfig(kind="vq", n_embed=0, double_z=False))
    with pytest.raises(ValueError):
        build_first_stage(AutoencoderConfig(kind="kl", ch=32, ch_mult=(1,), attn_type="linear"))


# --- tiling ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,tile,overlap,unit", [(16, 8, 4, 8), (17, 8, 3, 1), (50, 12, 4, 4), (9, 8, 2, 2)])
def test_blend_weights_partition_unity(size, tile, overlap, unit):
    plan = blend_plan(size, tile, overlap, unit)
    total = torch.zeros(size * unit)
    ramp = max(overlap * unit, 1)
    for start, w in plan:
        assert 0 <= w.min() and w.max() <= 1
        full = torch.zeros(size * unit)
        full[start * unit:start * unit + len(w)] = w
        total += full
        assert full.diff().abs().max() <= 1.5 / ramp  # smooth ramps, no step at a tile border
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert plan[0][0] == 0 and plan[-1][0] + len(plan[-1][1]) // unit == size


def test_tiled_whole_input_is_exact():
    kl, vq = _randomize(AutoencoderKL(SMALL_KL_ATTN)), _randomize(VQModel(SMALL_VQ))
    x = _image(SMALL_KL)
    with torch.no_grad():
        z = kl.encode(x).mean
        assert torch.equal(decode_tiled(kl.decode, z, tile=16, overlap=4, factor=2), kl.decode(z))
        assert torch.equal(encode_tiled(kl.encode, x, tile=32, overlap=8, factor=2).mean, z)
        h = vq.encode(x)
        assert torch.equal(encode_tiled(vq.encode, x, tile=64, overlap=8, factor=2), h)
        assert torch.equal(decode_tiled(vq.decode, h, tile=16, overlap=2, factor=2), vq.decode(h))


def test_tiled_local_fn_is_exact():
    """With a position-wise function the blend reproduces the untiled output: tiles land where they belong."""
    z = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(4))
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2.0) * 3 + 1  # noqa: E731
    torch.testing.assert_close(decode_tiled(up, z, tile=12, overlap=4, factor=2), up(z), atol=1e-5, rtol=0)
    down = lambda t: torch.nn.functional.avg_pool2d(t, 4)  # noqa: E731
    x = up(z)
    torch.testing.assert_close(encode_tiled(down, x, tile=24, overlap=8, factor=4), down(x), atol=1e-5, rtol=0)


def test_tiled_conv_only_model_is_close():
    """Conv-only model (no attention): only zero padding at tile borders and per-tile GroupNorm statistics differ,
    so blended tiles stay close to the untiled pass and far closer than hard, non-overlapping tiles."""
    cfg = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), resolution=32,
                            attn_type="none")
    model = _randomize(AutoencoderKL(cfg))
    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model.decode(z)
        post = model.encode(full).mean
        errors = {}
        for name, tile, overlap in (("blend", 40, 24), ("hard", 32, 0)):
            dec = decode_tiled(model.decode, z, tile, overlap, factor=2) - full
            enc = encode_tiled(model.encode, full, 2 * tile, 2 * overlap, factor=2).mean - post
            interior = dec[..., 16:-16, 16:-16].abs().mean() / full.abs().mean()
            errors[name] = (interior.item(), dec.abs().max().item(), enc.abs().max().item())
    # measured: blend ≈ (0.077, 0.23, 0.07), hard ≈ (0.33, 1.98, 0.51)
    assert errors["blend"][0] <= 0.15, errors
    assert all(b <= 0.25 * h for b, h in zip(errors["blend"][1:], errors["hard"][1:])), errors
