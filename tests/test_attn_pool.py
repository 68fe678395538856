"""The first stage's attention with pooled keys (AutoencoderConfig.attn_pool_side): exact up to the side, a
hand-checked pooled attention above it, and off for every public family."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ldmcli.models.autoencoder_blocks as AB


def _block(pool_side: int, ch: int = 32, seed: int = 0) -> AB.AttnBlock:
    torch.manual_seed(seed)
    block = AB.AttnBlock(ch, pool_side).eval()
    for p in block.parameters():        # non-trivial norm affine and biases
        p.data.normal_(0, 0.3)
    return block


def _map(h: int, w: int, ch: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, ch, h, w, generator=g)


def test_up_to_the_side_it_is_the_exact_attention_bit_for_bit():
    x = _map(8, 6)
    exact, pooled = _block(0), _block(8)
    pooled.load_state_dict(exact.state_dict())
    with torch.no_grad():
        assert torch.equal(exact(x), pooled(x))


@pytest.mark.parametrize("size", [(12, 12), (11, 7)])
def test_above_the_side_keys_and_values_come_from_the_pooled_map(size):
    """By hand, in float64: scores of every query against the average-pooled (normalised) map's keys."""
    height, width = size
    block = _block(4).double()
    x = _map(height, width).double()
    step = math.ceil(max(height, width) / 4)
    with torch.no_grad():
        got = block(x)
        h = block.norm(x)
        pooled = F.adaptive_avg_pool2d(h, (math.ceil(height / step), math.ceil(width / step)))
        q = block.q(h).flatten(2)[0].T                    # [tokens, c]
        k, v = (proj(pooled).flatten(2)[0].T for proj in (block.k, block.v))
        assert k.shape[0] <= 16
        a = torch.softmax(q @ k.T / math.sqrt(q.shape[1]), -1) @ v
        want = x + block.proj_out(a.T.reshape(1, -1, height, width))
    assert torch.allclose(got, want, atol=1e-10)


def test_on_a_smooth_map_pooled_keys_change_little_and_cost_the_pooled_count(monkeypatch):
    exact, pooled = _block(0), _block(16)
    pooled.load_state_dict(exact.state_dict())
    x = F.interpolate(_map(8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    keys = []
    real = AB.attention
    monkeypatch.setattr(AB, "attention", lambda q, k, v: keys.append(k.shape[-2]) or real(q, k, v))
    with torch.no_grad():
        a, b = exact(x), pooled(x)
    assert keys == [64 * 64, 16 * 16]
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_only_the_embedded_photo_models_pool_and_old_headers_read_as_exact():
    from ldmcli.loading.presets import PRESETS
    from ldmcli.models.config import AutoencoderConfig
    from ldmcli.train import recipes as R
    assert all(cfg.first_stage.attn_pool_side == 0 for cfg in PRESETS.values())
    cpu = R.recipe("cpu").models
    assert {t: m.first_stage.attn_pool_side for t, m in cpu.items()} == {
        t: (R.PHOTO_ATTN_POOL_SIDE if t in ("superres", "inpaint") else 0) for t in cpu}
    assert AutoencoderConfig().attn_pool_side == 0


def test_the_shipped_photo_models_pool_their_attention():
    from ldmcli.loading import load
    from ldmcli.loading.registry import embedded_defaults
    for task in ("superres", "inpaint"):
        if embedded_defaults(task) is None:
            pytest.skip("no embedded default")
        model = load(None, task=task, device="cpu")[0]
        assert model.first_stage_model.decoder.mid.attn_1.pool_side == model.cfg.first_stage.attn_pool_side > 0
