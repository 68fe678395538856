"""inpaint task: condition builders against hand-computed values, and end-to-end runs of every family.

Tiny random-weight models with the real key layouts (SD 1.5/2 inpainting: 9-channel hybrid UNet; LDM
inpainting_big: VQ no-attention + 7-channel ADM-attention UNet, autoencoder stored twice; txt2img and unconditional
models for latent blending) are written as CompVis-layout safetensors with their config in the header and loaded
through `load_model`, as a real checkpoint would be.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcli.models import config as C
from ldmcli.loading.checkpoint import load_model
from ldmcli.errors import InputError, UsageError
from ldmcli.io.images import pil_to_tensor
from ldmcli.cli.jobs import Job
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import pad_to_multiple
from ldmcli.cli.inputs import run_job
from ldmcli.tasks.inpaint import inpaint, inpaint_family, ldm_condition, paste_back, sd_condition
from tiny import SD1_TINY, SD2_TINY, TINY_UNET, TINY_VQ

SD1_INPAINT = SD1_TINY.with_(name="tiny-sd1-inpainting", task="inpaint", conditioning_key="hybrid",
                             unet=replace(TINY_UNET, in_channels=9))
SD2_INPAINT = SD2_TINY.with_(name="tiny-sd2-inpainting", task="inpaint", conditioning_key="hybrid",
                             parameterization="eps", unet=replace(SD2_TINY.unet, in_channels=9))
LDM_INPAINT = C.ModelConfig(
    name="tiny-ldm-inpainting-big", task="inpaint", cond_stage="first_stage", conditioning_key="concat",
    unet=C.UNetConfig(in_channels=7, out_channels=3, model_channels=32, channel_mult=(1, 2),
                      attention_resolutions=(2,), num_heads=2, use_spatial_transformer=False, resblock_updown=True),
    first_stage=replace(TINY_VQ, attn_type="none"), linear_start=0.0015, linear_end=0.0205, scale_factor=1.0,
    latent_size=8, latent_channels=3, default_steps=3, default_guidance=1.0)
UNCOND_VQ = C.ModelConfig(
    name="tiny-ldm-uncond", task="uncond", cond_stage=None, conditioning_key=None,
    unet=C.UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
                      attention_resolutions=(2,), num_head_channels=16, use_spatial_transformer=False),
    first_stage=TINY_VQ, linear_start=0.0015, linear_end=0.0195, scale_factor=1.0, latent_size=8,
    latent_channels=3, default_steps=3, default_guidance=1.0)
FAMILIES = {"sd1-inpainting": SD1_INPAINT, "sd2-inpainting": SD2_INPAINT, "ldm-inpainting-big": LDM_INPAINT,
            "txt2img-blend": SD1_TINY, "uncond-blend": UNCOND_VQ}
FAST = SamplerSettings(steps=3, guidance_scale=3.0)


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    """Each family written as a CompVis-layout safetensors file and loaded back through the loader."""
    def first_stage_twice(sd):   # `__is_first_stage__`: real files hold the autoencoder twice
        sd.update({"cond_stage_model." + k[len("first_stage_model."):]: v.clone() for k, v in sd.items()
                   if k.startswith("first_stage_model.")})
    out = {}
    for i, (name, cfg) in enumerate(FAMILIES.items()):
        path = tiny_ckpt(cfg, seed=10 + i, name=name,
                         edit=first_stage_twice if cfg.cond_stage == "first_stage" else None)
        model, info = load_model(path)
        assert info.family == cfg.name and not info.unexpected
        out[name] = model
    return out


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _mask(w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[h // 4: 3 * h // 4, w // 3: w - 2] = 1.0
    return m


def _unet_inputs(model):
    """Record what the UNet receives: (x, kwargs) per call."""
    calls = []
    model.model.diffusion_model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((args[0].clone(), dict(kwargs))), with_kwargs=True)
    return calls


# --- condition builders --------------------------------------------------------------------------------------------
def test_ldm_condition_hand_computed(models):
    model = models["ldm-inpainting-big"]
    x = pil_to_tensor(_image(16, 12))
    hole = torch.from_numpy(_mask(16, 12))[None, None]
    with torch.inference_mode():
        c, mask = ldm_condition(model, x, hole)["c_concat"]
        masked = torch.where(hole > 0, torch.full_like(x, -1.0), x)       # hole painted black, rest untouched
        expected = model.first_stage_model.quant_conv(model.first_stage_model.encoder(masked))   # not quantized
    torch.testing.assert_close(c, expected, atol=0, rtol=0)
    assert set(mask.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(mask, hole[..., ::2, ::2] * 2 - 1, atol=0, rtol=0)    # nearest = top-left pixel


def test_sd_condition_hand_computed(models):
    model = models["sd1-inpainting"]
    x = pil_to_tensor(_image(16, 12))
    hole = torch.from_numpy(_mask(16, 12))[None, None]
    with torch.inference_mode():
        mask, z = sd_condition(model, x, hole, seeds=[5, 6])["c_concat"]
        masked = torch.where(hole > 0, torch.zeros_like(x), x)              # hole = 0 (grey in [−1, 1])
        posterior = model.first_stage_model.encode(masked)
        expected = []
        for seed in (5, 6):   # a posterior sample per seed, from the seed's own side stream
            eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(seed + 0xE4C))
            expected.append(model.scale_factor * (posterior.mean + posterior.std * eps))
    torch.testing.assert_close(z, torch.cat(expected), atol=1e-6, rtol=0)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(mask, hole[..., ::2, ::2], atol=0, rtol=0)


@pytest.mark.parametrize("name,mask_channels,mask_values", [("sd1-inpainting", slice(4, 5), {0.0, 1.0}),
                                                            ("ldm-inpainting-big", slice(6, 7), {-1.0, 1.0})])
def test_unet_channel_order(models, name, mask_channels, mask_values):
    """SD: [z_t(4), mask(1), masked latent(4)]; LDM: [x_t(3), masked latent(3), mask(1)] (MODELS.md §0 item 6).
    With guidance, the unconditional half of the batch gets the same c_concat."""
    model = models[name]
    calls = _unet_inputs(model)
    try:
        inpaint(model, _image(16, 12), _mask(16, 12), seeds=[1], settings=SamplerSettings(steps=1, guidance_scale=4))
    finally:
        model.model.diffusion_model._forward_pre_hooks.clear()
    x, kwargs = calls[0]
    assert x.shape[1] == model.cfg.unet.in_channels
    assert set(x[:, mask_channels].unique().tolist()) == mask_values
    if name == "sd1-inpainting":
        assert x.shape[0] == 2 and kwargs["context"].shape[0] == 2            # [uncond, cond]
        torch.testing.assert_close(x[0, 4:], x[1, 4:], atol=0, rtol=0)


def test_families():
    assert [inpaint_family(c) for c in FAMILIES.values()] == ["sd", "sd", "ldm", "blend", "blend"]
    with pytest.raises(UsageError, match="inpaint needs"):
        inpaint_family(SD1_TINY.with_(conditioning_key="concat", unet=replace(TINY_UNET, in_channels=7)))


def test_pad_to_multiple():
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    p = pad_to_multiple(x, 4)
    assert p.shape == (1, 1, 4, 8)
    torch.testing.assert_close(p[..., :3, :5], x)
    torch.testing.assert_close(p[..., 3, :5], x[..., 1, :])                   # reflected about the last row
    assert pad_to_multiple(torch.ones(1, 1, 2, 1), 4).unique().tolist() == [1.0]   # too small to mirror: edge
    assert pad_to_multiple(torch.ones(1, 1, 3, 3), 4, value=0.0).sum() == 9


# --- end to end ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_outside_mask_unchanged_odd_size(models, name):
    """Odd sizes are padded and cropped back; every pixel outside the mask is the original's, bit for bit."""
    image, mask = _image(13, 11, seed=2), _mask(13, 11)
    prompt = "" if name in ("ldm-inpainting-big", "uncond-blend") else "a red square"
    out = inpaint(models[name], image, mask, prompt, seeds=[3, 4], settings=FAST)
    assert len(out) == 2
    for img in out:
        assert img.size == image.size and img.mode == "RGB"
        a, b = np.asarray(img), np.asarray(image)
        assert np.array_equal(a[mask == 0], b[mask == 0])
        assert not np.array_equal(a[mask == 1], b[mask == 1])


def test_feathered_mask_outside_unchanged(models):
    image = _image(16, 12, seed=4)
    mask = np.zeros((12, 16), np.float32)
    mask[3:9, 4:12] = 1.0
    mask[2, 4:12] = mask[9, 4:12] = 0.3                                        # a soft rim
    out = inpaint(models["txt2img-blend"], image, mask, "x", seeds=[0], settings=FAST)[0]
    assert np.array_equal(np.asarray(out)[mask == 0], np.asarray(image)[mask == 0])


def test_paste_back_alpha():
    orig = Image.fromarray(np.full((1, 3, 3), 100, np.uint8))
    gen = Image.fromarray(np.full((1, 3, 3), 200, np.uint8))
    out = np.asarray(paste_back(orig, gen, np.array([[0.0, 0.5, 1.0]], np.float32)))
    assert out[0, :, 0].tolist() == [100, 150, 200]


def test_batch_does_not_change_a_sample(models):
    """Sample k depends on its seed only (x_T and the posterior sample both come from it)."""
    image, mask = _image(8, 8, seed=5), _mask(8, 8)
    both = inpaint(models["sd2-inpainting"], image, mask, "a", seeds=[7, 8], settings=FAST)
    alone = inpaint(models["sd2-inpainting"], image, mask, "a", seeds=[8], settings=FAST)
    assert np.array_equal(np.asarray(both[1]), np.asarray(alone[0]))


def test_bad_inputs(models):
    model, image = models["sd1-inpainting"], _image(16, 12)
    with pytest.raises(InputError, match="mask is 12x16 but the image is 16x12"):
        inpaint(model, image, np.ones((16, 12), np.float32), seeds=[0])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        inpaint(model, image, _mask(16, 12) * 255, seeds=[0])
    with pytest.raises(InputError, match="nothing to repaint"):
        inpaint(model, image, np.full((12, 16), 0.4, np.float32), seeds=[0])
    with pytest.raises(UsageError, match="takes no prompt"):
        inpaint(models["ldm-inpainting-big"], image, _mask(16, 12), "a cat", seeds=[0])


def test_run_job(models, tmp_path):
    _image(16, 12, seed=6).save(tmp_path / "img.png")
    Image.fromarray((_mask(32, 24) * 255).astype(np.uint8)).save(tmp_path / "mask.png")   # same aspect, 2x
    job = Job(prompt="a", image=str(tmp_path / "img.png"), mask=str(tmp_path / "mask.png"),
              extra={"mask_blur": 1, "invert_mask": False})
    out = run_job("inpaint", models["sd1-inpainting"], job, [1], FAST, None)
    assert out[0].size == (16, 12)
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match="aspect"):
        run_job("inpaint", models["sd1-inpainting"], replace(job, mask=str(tmp_path / "wide.png")), [1], FAST, None)
    with pytest.raises(UsageError, match="invert_mask"):
        run_job("inpaint", models["sd1-inpainting"], replace(job, extra={"invert_mask": "yes"}), [1], FAST, None)
