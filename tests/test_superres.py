"""superres task and tiled latent sampling: conditions against hand-computed values, output sizes, tiling.

Tiny random-weight models with the real key layouts (LDM bsr_sr: 6-channel ADM-attention UNet on a VQ-f4; SD x4
upscaler: 7-channel UNet with label_emb (num_classes) and OpenCLIP text on a KL-f4, v-prediction), written as
CompVis-layout safetensors with their config in the header and loaded through `load_model`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcli.models import config as C
from ldmcli.loading.checkpoint import load_model
from ldmcli.errors import UsageError
from ldmcli.io.images import pil_to_tensor
from ldmcli.cli.jobs import Job
from ldmcli.sampling.pipeline import sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.cli.inputs import run_job
from ldmcli.tasks.superres import superres, x4_condition
from ldmcli.sampling.tiling import Tiling, tiled_apply
from ldmcli.tasks.geometry import plan_tiling
from tiny import TINY_OPENCLIP

VQ_F4 = C.AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 1, 2), resolution=32,
                            double_z=False, n_embed=64)
KL_F4 = C.AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 1, 2), resolution=32)
BSR = C.ModelConfig(
    name="tiny-ldm-bsr-sr", task="superres", cond_stage="identity", conditioning_key="concat",
    unet=C.UNetConfig(in_channels=6, out_channels=3, model_channels=32, channel_mult=(1, 2),
                      attention_resolutions=(2,), num_head_channels=16, use_spatial_transformer=False),
    first_stage=VQ_F4, linear_start=0.0015, linear_end=0.0155, scale_factor=1.0, latent_size=8, latent_channels=3,
    default_steps=3, default_guidance=1.0, default_eta=1.0)
X4 = C.ModelConfig(
    name="tiny-sd-x4-upscaler", task="superres", cond_stage=TINY_OPENCLIP, conditioning_key="hybrid-adm",
    unet=C.UNetConfig(in_channels=7, out_channels=4, model_channels=32, channel_mult=(1, 2),
                      attention_resolutions=(1, 2), num_heads=-1, num_head_channels=8, context_dim=32, legacy=False,
                      use_linear_in_transformer=True, num_classes=1000, disable_self_attentions=(True, False)),
    first_stage=KL_F4, parameterization="v", linear_start=1e-4, linear_end=0.02, scale_factor=0.08333,
    latent_size=8, max_noise_level=350, default_steps=3, default_guidance=9.0)
FAST = SamplerSettings(steps=3)


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    def augmentation_buffers(sd):   # real x4 files carry the augmentation schedule's buffers; the loader ignores them
        sd["low_scale_model.alphas_cumprod"] = torch.rand(1000)
    out = {}
    for i, cfg in enumerate((BSR, X4)):
        model, info = load_model(tiny_ckpt(cfg, seed=20 + i, edit=augmentation_buffers if cfg is X4 else None))
        assert info.family == cfg.name and not info.unexpected
        out[cfg.name] = model
    return out["tiny-ldm-bsr-sr"], out["tiny-sd-x4-upscaler"]


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth image (a super-resolution input), not white noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    rgb = [127 + 100 * np.sin(xx / 3 + p) * np.cos(yy / 4 - p) for p in phase]
    return Image.fromarray(np.stack(rgb, -1).astype(np.uint8))


def _unet_inputs(model):
    calls = []
    model.model.diffusion_model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((args[0].clone(), dict(kwargs))), with_kwargs=True)
    return calls


# --- conditions ----------------------------------------------------------------------------------------------------
def test_bsr_unet_input_is_latent_then_low_res(models):
    bsr, _ = models
    image = _image(8, 6)
    calls = _unet_inputs(bsr)
    try:
        superres(bsr, image, seeds=[0], settings=FAST)
    finally:
        bsr.model.diffusion_model._forward_pre_hooks.clear()
    x, kwargs = calls[0]
    assert x.shape == (1, 6, 6, 8) and kwargs["y"] is None and kwargs["context"] is None   # no guidance, no text
    torch.testing.assert_close(x[:, 3:], pil_to_tensor(image), atol=0, rtol=0)            # lr in [−1, 1]


def test_x4_noise_augmentation_hand_computed(models):
    _, x4 = models
    lr = pil_to_tensor(_image(8, 6))
    level, seeds = 37, [3, 4]
    with torch.inference_mode():
        cond, uncond = x4_condition(x4, lr, "a photo", "blurry", level, seeds)
    betas = np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000, dtype=np.float64) ** 2
    a = np.prod(1 - betas[:level + 1])                                          # ᾱ_n, n = 37
    for k, seed in enumerate(seeds):
        eps = torch.randn(lr.shape[1:], generator=torch.Generator().manual_seed(seed + 0xA06))
        expected = np.sqrt(a) * lr[0] + np.sqrt(1 - a) * eps
        torch.testing.assert_close(cond["c_concat"][0][k], expected.float(), atol=1e-6, rtol=0)
    assert cond["y"].tolist() == [level, level] and cond["y"].dtype == torch.long
    assert uncond["c_concat"][0] is cond["c_concat"][0] and uncond["y"] is cond["y"]     # kept by the uncond branch
    assert not torch.equal(cond["c_crossattn"][0], uncond["c_crossattn"][0])


def test_x4_unet_input_order_and_y(models):
    _, x4 = models
    calls = _unet_inputs(x4)
    try:
        superres(x4, _image(8, 6), "a", seeds=[1], noise_level=50, settings=SamplerSettings(steps=1))
    finally:
        x4.model.diffusion_model._forward_pre_hooks.clear()
    x, kwargs = calls[0]
    assert x.shape == (2, 7, 6, 8)                                              # [uncond, cond] × [z(4), x_aug(3)]
    assert kwargs["y"].tolist() == [50, 50]
    torch.testing.assert_close(x[0, 4:], x[1, 4:], atol=0, rtol=0)


# --- end to end ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", [0, 1], ids=["bsr", "x4"])
def test_output_is_4x_for_odd_sizes(models, which):
    model = models[which]
    prompt = "a house" if which else ""
    out = superres(model, _image(7, 5), prompt, seeds=[1, 2], settings=FAST)
    assert [im.size for im in out] == [(28, 20), (28, 20)]
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))


def test_bad_options(models):
    bsr, x4 = models
    image = _image(8, 8)
    with pytest.raises(UsageError, match="upscales by exactly 4, not 2"):
        superres(bsr, image, scale=2, seeds=[0])
    with pytest.raises(UsageError, match="noise_level must be an integer between 0 and 350"):
        superres(x4, image, noise_level=351, seeds=[0])
    with pytest.raises(UsageError, match="takes no prompt"):
        superres(bsr, image, "a cat", seeds=[0])
    with pytest.raises(UsageError, match="tile overlap"):
        superres(bsr, image, seeds=[0], tile_size=4, tile_overlap=4)
    with pytest.raises(UsageError, match="tile size must be at least 2"):
        superres(bsr, image, seeds=[0], tile_size=1)


# --- tiling --------------------------------------------------------------------------------------------------------
def test_plan_tiling(models):
    bsr, _ = models
    assert plan_tiling(bsr, (8, 8)) is None                                     # native latent: one pass
    assert plan_tiling(bsr, (16, 8)) == Tiling(8, 2)                            # default: native tile, 1/4 overlap
    assert plan_tiling(bsr, (16, 8), tile_size=7, tile_overlap=3) == Tiling(6, 3)  # rounded to the UNet multiple
    assert plan_tiling(bsr, (16, 8), tile_size=16) is None


def test_one_tile_equals_untiled(models):
    """A single tile covering the latent is bit-identical to the plain model, step by step and end to end."""
    _, x4 = models
    lr = pil_to_tensor(_image(8, 6))
    with torch.inference_mode():
        cond, uncond = x4_condition(x4, lr, "a", "", 20, [5])
        x, t = torch.randn(1, 4, 6, 8), torch.tensor([500.0])
        plain = x4.apply_model(x, t, **cond)
        one = tiled_apply(x4.apply_model, x, t, cond["c_concat"], cond["c_crossattn"], cond["y"], Tiling(8, 2))
    assert torch.equal(plain, one)
    settings = SamplerSettings(steps=3, guidance_scale=5.0)
    z_plain = sample_latents(x4, cond, uncond, (4, 6, 8), [5], settings)
    z_tiled = sample_latents(x4, cond, uncond, (4, 6, 8), [5], settings, tiling=Tiling(8, 2))
    assert torch.equal(z_plain, z_tiled)


def _row_jumps(a: np.ndarray) -> np.ndarray:
    """Mean |difference| between each row and the next of an [H, W, C] array."""
    return np.abs(np.diff(np.asarray(a, dtype=np.float64), axis=0)).mean(axis=(1, 2))


class Disagreeing:
    """The tiny model plus a different constant per call, i.e. per tile: tiles that disagree are what makes seams."""

    def __init__(self, model, delta: float):
        self.model, self.delta, self.calls = model, delta, 0

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, y=None):
        self.calls += 1
        return self.model.apply_model(x, t, c_concat, c_crossattn, y) + self.delta * self.calls


def test_two_tiles_blend_without_seam(models):
    """Two tiles along the height (latent rows 0–7 and 4–11, overlap 4) that disagree by δ = 1, far more than the
    model's own row-to-row change (~0.03): the blend spreads δ over the overlap, so no step between rows exceeds
    δ/overlap plus the model's own change (a hard cut would jump by δ at one row)."""
    bsr, _ = models
    lr = pil_to_tensor(_image(8, 12))
    x = torch.linspace(-1, 1, 12)[:, None].expand(12, 8).expand(1, 3, 12, 8).contiguous()   # smooth x_t
    t = torch.tensor([300.0])
    tiling = plan_tiling(bsr, (12, 8), tile_size=8, tile_overlap=4)
    assert tiling == Tiling(8, 4)
    with torch.inference_mode():
        plain = bsr.apply_model(x, t, [lr])
        model = Disagreeing(bsr, 1.0)
        out = tiled_apply(model.apply_model, x, t, [lr], None, None, tiling)
    assert model.calls == 2
    own = _row_jumps(plain[0].permute(1, 2, 0).numpy()).max()
    jumps = _row_jumps(out[0].permute(1, 2, 0).numpy())
    assert own < 0.1 and jumps.max() <= 1.0 / 4 + own, (jumps, own)
    torch.testing.assert_close(out[..., :4, :] - plain[..., :4, :], torch.full((1, 3, 4, 8), 1.0), atol=0.15, rtol=0)
    torch.testing.assert_close(out[..., 8:, :] - plain[..., 8:, :], torch.full((1, 3, 4, 8), 2.0), atol=0.15, rtol=0)


def test_two_tile_superres_end_to_end(models):
    """A 2-tile run, sampled and decoded by tiles: 4x output, and the rows at the tile edges (pixel rows 16 and 32)
    change no more than the others do."""
    bsr, _ = models
    out = superres(bsr, _image(8, 12, seed=3), seeds=[0], settings=FAST, tile_size=8, tile_overlap=4)[0]
    assert out.size == (32, 48)
    jumps = _row_jumps(np.asarray(out))
    edges = [15, 31]                                                            # rows 15→16 and 31→32
    assert jumps[edges].max() <= np.delete(jumps, edges).max()


def test_run_job(models, tmp_path):
    _, x4 = models
    _image(6, 4).save(tmp_path / "lr.png")
    job = Job(prompt="a", image=str(tmp_path / "lr.png"), extra={"scale": 4, "noise_level": 30, "tile_size": 8})
    assert run_job("superres", x4, job, [0, 1], FAST, None)[1].size == (24, 16)
    with pytest.raises(UsageError, match="'noise_level' should be int"):
        run_job("superres", x4, replace(job, extra={"noise_level": "high"}), [0], FAST, None)
    with pytest.raises(UsageError, match="needs an image"):
        run_job("superres", x4, Job(prompt="a"), [0], FAST, None)
