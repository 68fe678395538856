"""superres --ensemble: the mean of flipped and rotated views of the input, each turned back (tasks/superres.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import ldmcli.tasks.superres as S
from ldmcli.errors import UsageError


def _picture(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _config(ensemble=1, match=False):
    from tiny import TINY_VAE
    from ldmcli.models import config as C
    return C.ModelConfig(name="tiny-sr", task="superres", first_stage=replace(TINY_VAE, ch_mult=(1, 2, 2)),
                         unet=C.UNetConfig(in_channels=7, out_channels=4, model_channels=32, channel_mult=(1, 2),
                                           attention_resolutions=(), num_heads=-1, num_head_channels=16,
                                           use_spatial_transformer=False),
                         cond_stage="identity", conditioning_key="concat", latent_size=8, scale_factor=1.0,
                         default_steps=1, default_guidance=1.0, default_match_input=match,
                         default_ensemble=ensemble)


@pytest.fixture(scope="module")
def model():
    from tiny import tiny_model
    return tiny_model(_config(), seed=3).eval()


def test_views_are_the_eight_symmetries_and_each_is_turned_back(model, monkeypatch):
    """An upscaler that treats every view alike (nearest-neighbour ×4) gives the same picture from each view once
    it is turned back, so their mean is that picture exactly; a view turned back wrongly would blur it. The input
    is not square, so the transposing views change its shape."""
    seen = []

    def fake(model, image, family, prompt, negative, scale, level, seeds, *rest):
        seen.append((image.size, tuple(seeds)))
        return [image.resize((4 * image.width, 4 * image.height), Image.Resampling.NEAREST) for _ in seeds]
    monkeypatch.setattr(S, "_upscale", fake)
    lr = _picture(5, 3)
    want = lr.resize((20, 12), Image.Resampling.NEAREST)
    out = S.superres(model, lr, seeds=[7, 8], ensemble=8)
    assert [o.tobytes() for o in out] == [want.tobytes()] * 2
    assert len({v for v in S.VIEWS}) == 8 and [size for size, _ in seen] == [(5, 3)] * 4 + [(3, 5)] * 4
    assert seen[0][1] == (7, 8)                                           # view 0: the seeds themselves
    assert len({s for _, seeds in seen for s in seeds}) == 16             # every other view its own noise


def test_the_mean_of_views_is_what_an_orientation_dependent_upscaler_gives_on_average(model, monkeypatch):
    """With an upscaler that adds a left-to-right ramp (not symmetric), view k's contribution is the ramp turned
    back: the mean of the eight is the picture plus the ramp's mean over the symmetries, computed here by hand."""
    ramp = np.tile(np.linspace(0, 64, 16), (16, 1))[..., None]

    def fake(model, image, *rest):
        a = np.asarray(image.resize((16, 16), Image.Resampling.NEAREST), np.float64) + ramp
        return [Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))]
    monkeypatch.setattr(S, "_upscale", fake)
    flat = Image.new("RGB", (4, 4), (100, 100, 100))
    out = np.asarray(S.superres(model, flat, seeds=[0], ensemble=8)[0], np.float64)
    r = np.rint(ramp[..., 0])
    turned = [r, r[:, ::-1], r, r[:, ::-1], r.T, r.T[::-1, ::-1], r.T[::-1], r.T[:, ::-1]]
    want = 100 + np.mean([np.asarray(t) for t in turned], 0)
    assert np.abs(out[..., 0] - want).max() <= 0.5 + 1e-9
    assert np.abs(out[..., 0] - (100 + r)).max() > 10          # the views really were averaged


def test_one_view_is_the_plain_upscale_and_more_views_change_it(model):
    lr = _picture(9, 7, 1)
    one = S.superres(model, lr, seeds=[4])[0]                    # the config's default: 1 view
    assert one.tobytes() == S.superres(model, lr, seeds=[4], ensemble=1)[0].tobytes()
    two = S.superres(model, lr, seeds=[4], ensemble=2)[0]
    assert two.size == one.size == (36, 28) and two.tobytes() != one.tobytes()
    assert two.tobytes() == S.superres(model, lr, seeds=[4], ensemble=2)[0].tobytes()     # deterministic


def test_the_models_default_ensemble_shrinks_with_the_output_and_the_option_is_kept(model):
    eight = type("M", (), {"cfg": _config(ensemble=8)})()
    assert S.ensemble_size(eight, None) == 8
    assert S.ensemble_size(eight, None, S.ENSEMBLE_PIXELS) == 8
    assert S.ensemble_size(eight, None, 4 * S.ENSEMBLE_PIXELS) == 2          # 1024 x 1024 px of output
    assert S.ensemble_size(eight, None, 100 * S.ENSEMBLE_PIXELS) == 1
    assert S.ensemble_size(eight, 8, 100 * S.ENSEMBLE_PIXELS) == 8           # asked for: given
    assert S.ensemble_size(model, None) == 1 and S.ensemble_size(model, 3) == 3
    for bad in (0, 9, True, 2.0, "8"):
        with pytest.raises(UsageError, match="ensemble must be a whole number of views from 1 to 8"):
            S.ensemble_size(model, bad)


def test_progress_counts_sampler_steps_not_views(model):
    calls = []
    S.superres(model, _picture(6, 6), seeds=[0], ensemble=4, settings=S.SamplerSettings(steps=3),
               callback=lambda *a: calls.append(1))
    assert len(calls) == 3


def test_the_option_reaches_the_task_and_bad_values_stop_before_the_model_loads(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from typer.testing import CliRunner
    import ldmcli.cli.runner as runner
    from ldmcli.cli.app import app
    from ldmcli.cli.inputs import READERS
    from ldmcli.cli.validate import MAX_ENSEMBLE
    from ldmcli.tasks import TASKS
    assert "ensemble" in TASKS["superres"].params and MAX_ENSEMBLE == len(S.VIEWS)
    assert READERS["ensemble"](SimpleNamespace(extra={"ensemble": 4}), None, {}) == 4
    _picture(8, 8).save(tmp_path / "in.png")
    monkeypatch.setattr(runner, "load_model", lambda *a: pytest.fail("the model was loaded"))
    r = CliRunner().invoke(app, ["superres", str(tmp_path / "in.png"), "--ensemble", "9"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    jobs = tmp_path / "jobs.jsonl"
    for bad, words in (('0', "ensemble"), ('"all"', "ensemble"), ('1.5', "ensemble")):
        jobs.write_text(f'{{"image": "{tmp_path / "in.png"}", "ensemble": {bad}}}\n')
        r = CliRunner().invoke(app, ["superres", "--from-file", str(jobs), "-o", str(tmp_path / "out")])
        assert r.exit_code == 2 and words in r.stderr, r.stderr
