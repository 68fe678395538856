"""A constant context's cross-attention keys and values are computed once per sampling, with identical results."""
from __future__ import annotations

import collections

import torch

from ldmcli.models.attention import CrossAttention, context_projections_kept
from ldmcli.sampling.pipeline import sample_latents
from ldmcli.sampling.settings import SamplerSettings
from tiny import SD1_TINY, SD2_TINY, tiny_model


def _count_projections(model) -> collections.Counter:
    """{(module name, 'k'|'v', context or self): calls} for every CrossAttention of the UNet."""
    calls = collections.Counter()
    for name, m in model.model.diffusion_model.named_modules():
        if isinstance(m, CrossAttention):
            for part in ("k", "v"):
                getattr(m, f"to_{part}").register_forward_hook(
                    lambda mod, inp, out, key=(name, part): calls.update([key]))
    return calls


def _conds(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    dim = model.cfg.unet.context_dim
    cond = {"c_crossattn": [torch.randn(1, 6, dim, generator=g)]}
    uncond = {"c_crossattn": [torch.randn(1, 6, dim, generator=g)]}
    return cond, uncond


def _sample(model, steps: int = 5, sampler: str = "ddim"):
    cond, uncond = _conds(model)
    settings = SamplerSettings(sampler=sampler, steps=steps, guidance_scale=4.0, eta=0.0)
    shape = (model.cfg.latent_channels, model.cfg.latent_size, model.cfg.latent_size)
    return sample_latents(model, cond, uncond, shape, [1, 2], settings)


def test_cross_attention_projects_the_context_once_per_sampling():
    model = tiny_model(SD1_TINY, seed=1)
    calls = _count_projections(model)
    unet_calls = []
    model.model.diffusion_model.register_forward_pre_hook(lambda *a: unet_calls.append(1))
    _sample(model, 5)
    cross = {k: n for k, n in calls.items() if k[0].endswith("attn2")}
    self_ = {k: n for k, n in calls.items() if k[0].endswith("attn1")}
    assert cross and self_ and len(unet_calls) == 5
    assert set(cross.values()) == {1}                 # the old code: one per UNet call
    assert set(self_.values()) == {5}                 # self-attention's keys depend on x: every call
    # nothing is kept after the sampling: no context outlives it, and a direct call is not affected
    layers = [m for m in model.modules() if isinstance(m, CrossAttention)]
    assert all(m.kept is None and not m.keeps for m in layers)


def test_kept_projections_give_the_same_latents_bit_for_bit(monkeypatch):
    import ldmcli.models.attention as attention
    for cfg, sampler in ((SD1_TINY, "ddim"), (SD2_TINY, "dpmpp_2m")):
        model = tiny_model(cfg, seed=2)
        kept = _sample(model, 4, sampler)
        with monkeypatch.context() as m:
            m.setattr(attention, "context_projections_kept", lambda module: _nothing())
            plain = _sample(model, 4, sampler)
        assert torch.equal(kept, plain), cfg.name


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_a_new_or_changed_context_is_projected_again():
    torch.manual_seed(0)
    layer = CrossAttention(16, context_dim=8, heads=2, dim_head=8).eval()
    x = torch.randn(2, 5, 16)
    c1, c2 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with torch.no_grad(), context_projections_kept(layer):
        a = layer(x, c1)
        assert torch.equal(layer(x, c1), a)
        assert torch.equal(layer(x, c2), CrossAttention.forward(_plain(layer), x, c2))   # another tensor
        c2.mul_(2)                                                                     # written in place
        assert torch.equal(layer(x, c2), CrossAttention.forward(_plain(layer), x, c2))
        with torch.autocast("cpu", dtype=torch.bfloat16):                              # another precision
            assert layer(x, c2).dtype == torch.bfloat16
        assert layer(x, c2).dtype == torch.float32
    assert layer.kept is None


def _plain(layer: CrossAttention) -> CrossAttention:
    """The same layer with keeping off (a fresh computation), for comparison."""
    import copy
    other = copy.deepcopy(layer)
    other.keeps, other.kept = False, None
    return other


def test_inference_tensors_are_kept_by_identity():
    torch.manual_seed(0)
    layer = CrossAttention(16, context_dim=8, heads=2, dim_head=8).eval()
    with torch.inference_mode(), context_projections_kept(layer):
        x, c = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
        calls = []
        layer.to_k.register_forward_hook(lambda *a: calls.append(1))
        first = layer(x, c)
        assert torch.equal(layer(x, c), first)
        assert len(calls) == 1
