"""Photographs: the dead-leaves training pictures (world/deadleaves.py), the pixel-space agreement with the input
(tasks/match_input.py) and the photo figures of `ldm eval` (eval/photos.py)."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldmcli.eval import photos as P
from ldmcli.tasks.match_input import back_project, push_pull, seamless_fill
from ldmcli.world.deadleaves import dead_leaves


# ---- dead leaves --------------------------------------------------------------------------------------------------
def _spectrum_slope(img: Image.Image) -> float:
    """Slope of log radial power against log frequency (natural images: about −2)."""
    a = np.asarray(img.convert("L"), np.float64)
    a = a - a.mean()
    p = np.abs(np.fft.fftshift(np.fft.fft2(a * np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))))) ** 2
    n = a.shape[0]
    y, x = np.indices(p.shape) - n // 2
    r = np.hypot(x, y).astype(int)
    radial = np.bincount(r.ravel(), p.ravel()) / np.bincount(r.ravel())
    f = np.arange(2, n // 2)
    return float(np.polyfit(np.log(f), np.log(radial[f]), 1)[0])


def test_dead_leaves_are_deterministic_and_vary():
    a, b, c = dead_leaves(5, 32), dead_leaves(5, 32), dead_leaves(6, 32)
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))


def test_dead_leaves_have_the_power_spectrum_of_photographs():
    slopes = [_spectrum_slope(dead_leaves(s, 64)) for s in range(12)]
    photo = [_spectrum_slope(P.photo(n, 64)) for n in ("astronaut", "coffee", "camera")] if P.available() else []
    assert -3.2 < float(np.median(slopes)) < -1.4, slopes       # not white noise (0), not flat colour (steep)
    for s in photo:     # the photos themselves, measured the same way, fall in the same band
        assert -3.2 < s < -1.4


def test_dead_leaves_have_many_distinct_colours_and_some_grey_pictures():
    imgs = [np.asarray(dead_leaves(s, 32)).astype(int) for s in range(40)]
    grey = [bool((np.ptp(a, axis=2) <= 1).all()) for a in imgs]
    assert 1 <= sum(grey) <= 15
    assert np.median([len(np.unique(a.reshape(-1, 3), axis=0)) for a in imgs]) > 200   # not flat shapes


def test_thin_leaves_are_strokes_and_leave_the_stream_without_them_as_it_was():
    """`thin`: that share of the ellipses and rectangles are strokes (world/deadleaves.py); thin = 0 draws nothing
    more from the random stream, so every pool made without strokes keeps its pictures."""
    from ldmcli.world import deadleaves as D
    yy, xx = np.mgrid[-40:41, -40:41].astype(np.float32)
    for kind in (1, 2):       # ellipse, rectangle: the covered share of the bounding square of side 2r
        round_ = [D._inside(kind, xx, yy, 40.0, np.random.default_rng(s)).mean() for s in range(30)]
        thin = [D._inside(kind, xx, yy, 40.0, np.random.default_rng(s), thin=1.0).mean() for s in range(30)]
        assert np.median(round_) > 0.35 and max(thin) < 0.31 and np.median(thin) < 0.12, (kind, round_, thin)
    disk = [D._inside(0, xx, yy, 40.0, np.random.default_rng(s), thin=1.0).mean() for s in range(3)]
    assert min(disk) > 0.7                              # disks and polygons are never strokes
    a, b = np.asarray(dead_leaves(3, 32, 0.0)), np.asarray(dead_leaves(3, 32))
    assert np.array_equal(a, b)
    strokes = [np.asarray(dead_leaves(s, 32, 0.5)) for s in range(4)]
    assert all(not np.array_equal(x, np.asarray(dead_leaves(s, 32))) for s, x in enumerate(strokes))
    assert np.array_equal(strokes[0], np.asarray(dead_leaves(0, 32, 0.5)))


# ---- match input ----------------------------------------------------------------------------------------------------
def _smooth_picture(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


def test_back_projection_makes_the_shrink_reproduce_the_input_and_removes_a_colour_cast():
    hr = _smooth_picture(64)
    lr = P.shrink(hr)
    cast = Image.fromarray(np.clip(np.asarray(hr, np.int16) + np.array([25, -15, 10]), 0, 255).astype(np.uint8))
    fixed = back_project(cast, lr)
    err = lambda img: np.abs(np.asarray(P.shrink(img), float) - np.asarray(lr, float)).mean()   # noqa: E731
    assert err(cast) > 10 and err(fixed) < 1.0
    assert P.psnr(fixed, hr) > P.psnr(cast, hr) + 10


def test_kept_error_is_what_the_back_projection_leaves_of_an_error():
    from ldmcli.tasks.match_input import BACK_PROJECTIONS, _project, _resize, kept_error
    hr = np.asarray(dead_leaves(4, 64), np.float32)
    lr = _resize(hr, (16, 16))                                   # the truth's exact shrink, as in training
    # an output with a colour cast (low frequencies) and a grain (high): the projection's result minus the truth
    cast = np.broadcast_to(12 * np.sin(np.linspace(0, 3, 64, dtype=np.float32))[:, None, None], hr.shape)
    y = hr + cast + np.random.default_rng(0).normal(0, 6, hr.shape).astype(np.float32)
    want = _project(y, lr, BACK_PROJECTIONS) - hr
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]   # noqa: E731
    error = as_tensor(y - hr)
    got = kept_error(error)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want).max() < 0.05                       # Pillow's kernel, to float rounding
    assert kept_error(as_tensor(cast)).pow(2).mean() < 0.01 * float((cast ** 2).mean())   # a cast is thrown away
    assert kept_error(error).shape == error.shape and kept_error(error, iterations=0).equal(error)


def test_push_pull_keeps_known_values_and_fills_smoothly():
    v = torch.zeros(1, 32, 32)
    v[0, :, :16], v[0, :, 16:] = 10.0, 30.0
    w = torch.ones(32, 32)
    w[8:24, 8:24] = 0
    out = push_pull(v, w)
    assert torch.equal(out[:, w.bool()], v[:, w.bool()])
    hole = out[0, 8:24, 8:24]
    assert 10 <= hole.min() and hole.max() <= 30 and hole[:, 0].mean() < hole[:, -1].mean()
    assert push_pull(v, torch.zeros(32, 32)).abs().max() == 0      # nothing known: no shift


def test_seamless_fill_removes_the_decoders_colour_cast_at_the_seam():
    from ldmcli.tasks.inpaint import paste_back
    img = _smooth_picture(48, 1)
    hole = np.zeros((48, 48), np.float32)
    hole[12:36, 16:40] = 1
    # what a decoder with a colour cast returns: the right content, shifted by a smooth cast everywhere, so after
    # the paste-back of the original the fill's cast meets the exact pixels in a visible step
    ramp = np.linspace(-20, 30, 48)[None, :, None] * np.array([1.0, 0.5, -0.7])
    gen = Image.fromarray(np.clip(np.asarray(img, np.float64) + 15 + ramp, 0, 255).round().astype(np.uint8))
    plain = paste_back(img, gen, hole)
    fixed = paste_back(img, seamless_fill(img, gen, hole), hole)
    lines = P.border_lines(hole > 0.5)
    assert P.psnr(fixed, img, hole > 0.5) > P.psnr(plain, img, hole > 0.5) + 10
    assert P.seam_index(plain, img, lines) > 1.5 > 1.1 > P.seam_index(fixed, img, lines)


# ---- the photo figures --------------------------------------------------------------------------------------------
def test_seam_index_sees_a_tile_grid_and_not_a_clean_image():
    hr = _smooth_picture(64, 2)
    tiled = np.asarray(hr, np.int16).copy()
    for k in (16, 32, 48):
        tiled[:, k:] += 15         # a step at every tile border
        tiled[k:, :] += 15
    tiled = Image.fromarray(np.clip(tiled, 0, 255).astype(np.uint8))
    lines = P.grid_lines((64, 64), 16)
    assert P.seam_index(hr, hr, lines) == pytest.approx(1.0)
    assert P.seam_index(tiled, hr, lines) > 2


def test_border_lines_and_masked_psnr():
    m = np.zeros((8, 8), bool)
    m[2:5, 3:6] = True
    cols, rows = P.border_lines(m)
    assert cols[2, 2] and cols[2, 5] and not cols[2, 3] and rows[1, 3] and rows[4, 5] and not rows[2, 4]
    assert cols.sum() == 6 and rows.sum() == 6
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    assert P.psnr(a, b, m) > 90 and P.psnr(a, b) < 30


def test_photo_holes_are_inside_and_fixed():
    for i in range(14):
        h = P.photo_hole(i, 128)
        assert np.array_equal(h, P.photo_hole(i, 128)) and 0.03 < h.mean() < 0.17
        assert not h[:2].any() and not h[-2:].any() and not h[:, :2].any() and not h[:, -2:].any()


@pytest.mark.skipif(not P.available(), reason="needs scikit-image's sample photos")
def test_photos_are_real_and_bicubic_is_their_baseline():
    named = P.photos(128)
    assert [n for n, _ in named] == list(P.PHOTOS) and len(named) == 14
    for name, img in named:
        assert img.size == (128, 128) and len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 50, name
    gains = [P.psnr(P.bicubic(P.shrink(img)), img) - P.psnr(P.shrink(img).resize((128, 128), Image.Resampling.NEAREST),
                                                               img) for _, img in named]
    assert min(gains) > 0          # bicubic beats pixel repetition on every photo: a fair baseline


@pytest.mark.skipif(not P.available(), reason="needs scikit-image's sample photos")
def test_val_pictures_are_other_pictures_than_the_eval_photos_and_never_enlarged():
    from ldmcli.errors import UsageError
    val = P.photos(128, split="val")
    assert [n for n, _ in val] == list(P.VAL) and not set(P.VAL) & set(P.PHOTOS)
    assert [n for n, _ in P.photos(256, split="val")] == [n for n in P.VAL if n not in ("page", "text")]
    pixels = [np.asarray(img, np.float64) for _, img in val + P.photos(128)]
    for i, a in enumerate(pixels):      # no picture twice (scikit-image's cat is chelsea, say), even as a crop
        for b in pixels[i + 1:]:
            assert np.abs(a - b).mean() > 10
    for name, img in val:
        assert img.size == (128, 128) and img.mode == "RGB", name
    assert np.asarray(dict(val)["logo"]).max() == 255          # the logo's transparency is white, not black
    tiles = dict(P.photos(256, split="val", names=P.TILES))
    assert len(tiles) == 6 and all(img.size == (256, 256) for img in tiles.values())
    import skimage.data
    left, right, _ = skimage.data.stereo_motorcycle()
    # a tile is the camera's own pixels (not resized) at the corner its name gives, from the view it names
    assert np.array_equal(np.asarray(tiles["motorcycle_left_242_244"]), left[244:500, 242:498])
    assert np.array_equal(np.asarray(tiles["motorcycle_right_485_0"]), right[:256, 485:741])
    with pytest.raises(UsageError, match="--split"):
        P.photos(128, split="train")


# ---- the tasks with --match-input ---------------------------------------------------------------------------------
def _sr_config(attention=(), match=True):
    from tiny import TINY_VAE
    from ldmcli.models import config as C
    from dataclasses import replace
    return C.ModelConfig(name="tiny-sr", task="superres", first_stage=replace(TINY_VAE, ch_mult=(1, 2, 2)),
        unet=C.UNetConfig(in_channels=7, out_channels=4, model_channels=32, channel_mult=(1, 2),
                          attention_resolutions=attention, num_heads=-1, num_head_channels=16,
                          use_spatial_transformer=False),
        cond_stage="identity", conditioning_key="concat", latent_size=8, scale_factor=1.0, default_steps=2,
        default_guidance=1.0, default_match_input=match)


@pytest.mark.parametrize("attention", [(), (2,)])
def test_superres_runs_a_convolutional_unet_in_one_pass(monkeypatch, attention):
    from tiny import tiny_model
    import ldmcli.tasks.superres as S
    seen = []
    real = S.sample_latents
    monkeypatch.setattr(S, "sample_latents", lambda *a, **k: seen.append(k["tiling"]) or real(*a, **k))
    model = tiny_model(_sr_config(attention), seed=1).eval()
    out = S.superres(model, _smooth_picture(24), seeds=[0])[0]
    assert out.size == (96, 96)
    assert (seen[0] is None) == (not attention)     # 24 latent cells > the 8 of a tile: only attention tiles


def test_superres_back_projects_by_the_models_default_and_the_option():
    from tiny import tiny_model
    from ldmcli.tasks.superres import superres
    lr = _smooth_picture(12, 3)
    err = lambda img: np.abs(np.asarray(P.shrink(img), float) - np.asarray(lr, float)).mean()   # noqa: E731
    on = tiny_model(_sr_config(match=True), seed=1).eval()
    off = tiny_model(_sr_config(match=False), seed=1).eval()
    assert err(superres(on, lr, seeds=[0])[0]) < 3                         # random weights, input matched
    assert err(superres(off, lr, seeds=[0])[0]) > 10                       # random weights, nothing matched
    assert err(superres(off, lr, seeds=[0], match_input=True)[0]) < 3
    assert err(superres(on, lr, seeds=[0], match_input=False)[0]) > 10


def test_match_input_reaches_the_task_from_the_command_line_and_job_files():
    from types import SimpleNamespace
    from ldmcli.cli.inputs import READERS, job_option
    from ldmcli.errors import UsageError
    from ldmcli.tasks import TASKS
    assert "match_input" in TASKS["superres"].params and "match_input" in TASKS["inpaint"].params
    for extra, want in (({}, None), ({"match_input": False}, False), ({"match_input": True}, True)):
        assert READERS["match_input"](SimpleNamespace(extra=extra), None, {}) is want
    with pytest.raises(UsageError, match="match_input"):
        job_option(SimpleNamespace(extra={"match_input": "yes"}), "match_input")


def test_cli_has_the_match_input_switch():
    from typer.testing import CliRunner
    from ldmcli.cli.app import app
    for cmd in ("superres", "inpaint"):
        text = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--match-input" in text and "--no-match-input" in text


def test_inpaint_match_input_removes_the_step_at_the_holes_border():
    from tiny import SD1_TINY, tiny_model
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.inpaint import inpaint
    img = _smooth_picture(32, 4)
    hole = np.zeros((32, 32), np.float32)
    hole[8:24, 10:26] = 1
    lines = P.border_lines(hole > 0.5)
    one = SamplerSettings(steps=2)
    on = tiny_model(SD1_TINY.with_(default_match_input=True), seed=2).eval()
    off = tiny_model(SD1_TINY, seed=2).eval()
    plain = inpaint(off, img, hole, "x", seeds=[0], settings=one)[0]
    matched = inpaint(on, img, hole, "x", seeds=[0], settings=one)[0]
    assert np.array_equal(np.asarray(inpaint(off, img, hole, "x", seeds=[0], settings=one, match_input=True)[0]),
                          np.asarray(matched))                       # the option, or the model's default
    known = hole < 0.5
    assert np.array_equal(np.asarray(matched)[known], np.asarray(img)[known])   # outside: the original, exactly
    # random weights paint noise, whose own gradients stay; the step in colour goes
    assert P.seam_index(matched, img, lines) < 0.7 * P.seam_index(plain, img, lines)



def _grey(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def _chroma(img: Image.Image, where=None) -> float:
    """The largest spread between a pixel's channels (0: a grey picture)."""
    a = np.asarray(img, np.int16)
    a = a if where is None else a[where]
    return float((a.max(-1) - a.min(-1)).max())


def test_a_grey_picture_gives_a_grey_superres_that_still_shrinks_to_it():
    from tiny import tiny_model
    from ldmcli.tasks.superres import superres
    model = tiny_model(_sr_config(match=True), seed=1).eval()
    lr = _grey(_smooth_picture(12, 3))
    out = superres(model, lr, seeds=[0])[0]
    assert _chroma(out) == 0
    assert np.abs(np.asarray(P.shrink(out), float) - np.asarray(lr, float)).mean() < 3
    assert _chroma(superres(model, lr, seeds=[0], match_input=False)[0]) > 20     # random weights paint colour
    assert _chroma(superres(model, _smooth_picture(12, 3), seeds=[0])[0]) > 20    # a colour picture keeps it


def test_inpaint_fills_a_grey_picture_grey_only_when_restoring_it():
    """Without a prompt the fill restores the picture: grey in a grey picture. A prompt may ask for colour."""
    from tiny import SD1_TINY, tiny_model
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.inpaint import inpaint
    img = _grey(_smooth_picture(32, 4))
    hole = np.zeros((32, 32), np.float32)
    hole[8:24, 10:26] = 1
    two = SamplerSettings(steps=2)
    model = tiny_model(SD1_TINY.with_(default_match_input=True), seed=2).eval()
    inside = hole > 0.5
    assert _chroma(inpaint(model, img, hole, "", seeds=[0], settings=two)[0]) == 0
    assert _chroma(inpaint(model, img, hole, "x", seeds=[0], settings=two)[0], inside) > 20
    assert _chroma(inpaint(model, img, hole, "", seeds=[0], settings=two, match_input=False)[0], inside) > 20
    colour = _smooth_picture(32, 4)
    assert _chroma(inpaint(model, colour, hole, "", seeds=[0], settings=two)[0], inside) > 20

# ---- inpaint without a prompt: the model's unprompted steps and schedule -------------------------------------------
def test_unprompted_settings_apply_only_where_the_user_chose_nothing():
    from ldmcli.loading import presets
    from ldmcli.sampling.settings import SamplerSettings as S
    cfg = presets.SD1.with_(default_steps_unprompted=1, default_schedule_unprompted="trailing")
    got = S().unprompted(cfg).resolved(cfg)
    assert (got.steps, got.schedule) == (1, "trailing")
    for user in (S(steps=7), S(schedule="karras"), S(sampler="DPM++ 2M Karras"), S(karras=True)):
        assert user.unprompted(cfg) is user                          # the user's steps or schedule stand
    assert S().unprompted(presets.SD1) == S()                        # a model without them: its default_steps
    resolved = S().resolved(cfg)
    assert resolved.unprompted(cfg) is resolved                      # settings already resolved are final


def test_inpaint_without_a_prompt_samples_the_posterior_mean(monkeypatch):
    from tiny import SD1_TINY, tiny_model
    import ldmcli.tasks.inpaint as I
    seen = []
    real = I.sample_latents
    monkeypatch.setattr(I, "sample_latents", lambda m, c, u, shape, seeds, settings, **k:
                        seen.append(settings.resolved(m.cfg)) or real(m, c, u, shape, seeds, settings, **k))
    model = tiny_model(SD1_TINY.with_(default_steps=3, default_steps_unprompted=1,
                                      default_schedule_unprompted="trailing"), seed=2).eval()
    img, hole = _smooth_picture(32, 4), np.zeros((32, 32), np.float32)
    hole[8:24, 8:24] = 1
    I.inpaint(model, img, hole, "", seeds=[0])
    I.inpaint(model, img, hole, "a red circle", seeds=[0])
    assert [(s.steps, s.schedule) for s in seen] == [(1, "trailing"), (3, None)]


def test_the_embedded_inpaint_default_records_what_ran_with_and_without_a_prompt(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner
    from ldmcli.cli.app import app
    from ldmcli.io.png import read_metadata
    from ldmcli.loading.registry import embedded_defaults
    d = embedded_defaults("inpaint")
    if d is None or not d["steps_unprompted"]:
        pytest.skip("no embedded inpaint default with unprompted settings")
    _smooth_picture(32, 4).save(tmp_path / "in.png")
    hole = np.zeros((32, 32), np.uint8)
    hole[8:24, 8:24] = 255
    Image.fromarray(hole).save(tmp_path / "m.png")
    base = ["inpaint", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png")]
    for i, (extra, steps) in enumerate((([], d["steps_unprompted"]), (["a red circle"], d["steps"]),
                                        (["--steps", "4"], 4))):
        out = tmp_path / f"out{i}.png"
        r = CliRunner().invoke(app, base[:2] + extra + base[2:] + ["-o", str(out)])
        assert r.exit_code == 0, r.output
        assert read_metadata(out)["ldmcli"]["steps"] == steps


def test_a_models_default_schedule_applies_where_the_user_names_none():
    from ldmcli.loading import presets
    from ldmcli.sampling.settings import SamplerSettings as S
    cfg = presets.SD1.with_(default_schedule="trailing", default_steps=1)
    assert (S().resolved(cfg).steps, S().resolved(cfg).schedule) == (1, "trailing")
    assert S(steps=20).resolved(cfg).schedule == "trailing"             # the model's schedule, the user's steps
    assert S(schedule="karras").resolved(cfg).schedule == "karras"
    assert S(sampler="DPM++ 2M Karras").resolved(cfg).schedule == "karras"
    assert S(karras=True).resolved(cfg).karras
    assert S().resolved(presets.SD1).schedule is None                   # public families: the sampler's own


def test_the_embedded_superres_default_records_its_schedule(tmp_path):
    from typer.testing import CliRunner
    from ldmcli.cli.app import app
    from ldmcli.io.png import read_metadata
    from ldmcli.loading.registry import embedded_defaults
    d = embedded_defaults("superres")
    if d is None or not d["schedule"]:
        pytest.skip("no embedded superres default with a schedule of its own")
    _smooth_picture(12, 3).save(tmp_path / "in.png")
    for extra, want in (([], (d["steps"], d["schedule"])), (["--schedule", "karras", "--steps", "3"], (3, "karras"))):
        out = tmp_path / f"out{len(extra)}.png"
        r = CliRunner().invoke(app, ["superres", str(tmp_path / "in.png"), *extra, "-o", str(out)])
        assert r.exit_code == 0, r.output
        rec = read_metadata(out)["ldmcli"]
        assert (rec["steps"], rec["schedule"]) == want
