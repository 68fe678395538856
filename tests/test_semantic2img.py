"""semantic2img: one-hot maps and palettes against hand-computed values, the SpatialRescaler condition, sizes and
tiling, and `ldm semantic2img` end to end.

Tiny random-weight models shaped like LDM_SEMANTIC256 (VQ-f4 first stage, 6-channel UNet with ADM attention whose
attention_resolutions never occur, so only the middle block attends; SpatialRescaler with 2 bilinear stages and a
1×1 conv to 3 channels) are written as CompVis-layout safetensors with their config in the header: one with the 182
classes of the public model and no names, one with 7 named classes (like the embedded default).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.models import config as C
from ldmcli.loading.checkpoint import load_model
from ldmcli.cli.app import app
from ldmcli.errors import InputError, UsageError
from ldmcli.cli.jobs import Job
from ldmcli.io.segmap import check_class_ids, one_hot, parse_palette, read_segmap
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.cli.inputs import run_job
from ldmcli.tasks.semantic2img import list_labels, semantic2img, semantic_condition

VQ_F4 = C.AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 1, 2), resolution=32,
                            double_z=False, n_embed=64)
NAMES = ("background", "circle", "square", "triangle", "star", "hexagon", "heart")
SEMANTIC = C.ModelConfig(
    name="tiny-semantic2img", task="semantic2img", conditioning_key="concat",
    unet=C.UNetConfig(in_channels=6, out_channels=3, model_channels=32, channel_mult=(1, 2),
                      attention_resolutions=(32, 16, 8), num_heads=2, use_spatial_transformer=False),
    first_stage=VQ_F4, cond_stage=C.SpatialRescalerConfig(n_stages=2, in_channels=182, out_channels=3),
    linear_start=0.0015, linear_end=0.0205, scale_factor=1.0, latent_size=8, latent_channels=3, default_steps=2,
    default_guidance=1.0)
NAMED = SEMANTIC.with_(name="tiny-semantic2img-named", labels=NAMES,
                       cond_stage=C.SpatialRescalerConfig(n_stages=2, in_channels=7, out_channels=3))
FAST = SamplerSettings(steps=2)
runner = CliRunner()

MAP4 = np.array([[0, 1, 1, 2],
                 [0, 0, 2, 2],
                 [3, 3, 3, 3],
                 [1, 0, 2, 3]])


def ldm(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tiny_ckpt):
    return {cfg.name: tiny_ckpt(cfg, seed=40 + i) for i, cfg in enumerate((SEMANTIC, NAMED))}


@pytest.fixture(scope="module")
def models(files):
    out = {}
    for name, path in files.items():
        m, info = load_model(path)
        assert info.family == name and not info.unexpected
        out[name] = m
    return out["tiny-semantic2img"], out["tiny-semantic2img-named"]


# --- condition builders, by hand -----------------------------------------------------------------------------------
def test_one_hot_4x4_hand_computed():
    x = one_hot(MAP4, 4)
    expected = torch.tensor([[[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]],     # class 0
                             [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],     # class 1
                             [[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]],     # class 2
                             [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]]],    # class 3
                            dtype=torch.float32)
    assert x.shape == (1, 4, 4, 4) and x.dtype == torch.float32
    assert torch.equal(x[0], expected)
    assert torch.equal(one_hot(MAP4, 6)[0, 4:], torch.zeros(2, 4, 4))                # unused classes stay 0


def test_check_class_ids_names_offenders():
    check_class_ids(MAP4, 4)
    with pytest.raises(InputError, match=r"class id\(s\) 4, 255 outside 0-3 \(the model has 4 classes\)"):
        check_class_ids(np.array([[0, 4], [255, 4]]), 4)


def test_rescaler_condition_hand_computed(models):
    """Two bilinear ×0.5 stages of a 4×4 map average it to one cell (each stage averages 2×2 blocks), so the
    condition is W·p with p the class frequencies of MAP4: 4/16, 3/16, 4/16, 5/16 (rest 0)."""
    _, named = models
    with torch.inference_mode():
        c = semantic_condition(named, torch.from_numpy(MAP4))["c_concat"][0]
    w = named.cond_stage_model.channel_mapper.weight[:, :, 0, 0]                      # [3, 7]
    p = torch.tensor([4, 3, 4, 5, 0, 0, 0], dtype=torch.float32) / 16
    assert c.shape == (1, 3, 1, 1)
    torch.testing.assert_close(c[0, :, 0, 0], w @ p, atol=1e-6, rtol=0)


def test_palette_formats_hand_computed():
    expected = {(255, 0, 0): 1, (0, 0, 255): 2, (0, 0, 0): 0}
    texts = [json.dumps({"#ff0000": "circle", "0,0,255": 2, "#000000": "Background"}),
             json.dumps([["#FF0000", 1], [[0, 0, 255], "square"], [[0, 0, 0], "0"]]),
             json.dumps([{"colour": "#ff0000", "label": "circle"}, {"color": [0, 0, 255], "label": 2},
                         {"colour": "0 0 0", "label": "background"}]),
             "# label r g b\ncircle 255 0 0\n\nsquare #0000ff\n0 0 0 0\n"]
    for text in texts:
        assert parse_palette(text, NAMES, 7) == expected, text


def test_palette_errors():
    with pytest.raises(UsageError, match=r"unknown label 'cirle'; did you mean 'circle'"):
        parse_palette('{"#ff0000": "cirle"}', NAMES, 7)
    with pytest.raises(UsageError, match="class number 7 is out of range 0-6"):
        parse_palette('{"#ff0000": 7}', NAMES, 7)
    with pytest.raises(InputError, match="colour '#ff00' is not #rrggbb"):
        parse_palette('{"#ff00": 1}', NAMES, 7)
    with pytest.raises(InputError, match=r"listed twice, as class 1 and 2"):
        parse_palette("circle 255 0 0\nsquare #ff0000\n", NAMES, 7)
    with pytest.raises(InputError, match="invalid JSON"):
        parse_palette('{"#ff0000": 1,}', NAMES, 7)
    with pytest.raises(UsageError, match="class names are not known"):
        parse_palette('{"#ff0000": "circle"}', (), 182)


def test_colour_map_through_palette(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 0, 0]], [[0, 0, 255], [255, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    seg = read_segmap(tmp_path / "c.png", {(255, 0, 0): 1, (0, 0, 255): 2, (0, 0, 0): 0})
    assert seg.tolist() == [[1, 0], [2, 1]] and seg.dtype == np.int64
    with pytest.raises(InputError, match=r"1 colour\(s\) not in the palette: \(0, 0, 255\)"):
        read_segmap(tmp_path / "c.png", {(255, 0, 0): 1, (0, 0, 0): 0})


# --- the task -------------------------------------------------------------------------------------------------------
def _map(h: int, w: int, classes: int, seed: int = 0) -> np.ndarray:
    """Blocky class regions (a segmentation, not per-pixel noise)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, classes, (h // 4 + 1, w // 4 + 1))
    return np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:h, :w]


def test_unet_input_is_latent_then_condition(models):
    public, _ = models
    seg = _map(32, 32, 182)
    calls = []
    public.model.diffusion_model.register_forward_pre_hook(lambda mod, args, kw: calls.append((args[0], kw)),
                                                           with_kwargs=True)
    try:
        semantic2img(public, seg, seeds=[0], settings=SamplerSettings(steps=1))
    finally:
        public.model.diffusion_model._forward_pre_hooks.clear()
    with torch.inference_mode():
        c = semantic_condition(public, torch.from_numpy(seg))["c_concat"][0]
    x, kw = calls[0]
    assert x.shape == (1, 6, 8, 8) and kw["context"] is None and kw["y"] is None
    assert torch.equal(x[:, 3:], c)


def test_output_has_the_maps_size(models):
    public, _ = models
    seg = _map(22, 30, 182, seed=1)
    out = semantic2img(public, seg, seeds=[3, 4], settings=FAST)
    assert [im.size for im in out] == [(30, 22), (30, 22)]
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))


def test_large_map_full_size_and_tiled(models):
    """A 64×32 map (latent 16×8, twice the native 8): convolutional at full size by default, by tiles when a tile
    size is given; one tile covering the whole latent equals the untiled run exactly."""
    public, _ = models
    seg = _map(32, 64, 182, seed=2)
    shapes = []
    public.model.diffusion_model.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    try:
        full = semantic2img(public, seg, seeds=[0], settings=FAST)[0]
        n_full = len(shapes)
        tiles = semantic2img(public, seg, seeds=[0], settings=FAST, tile_size=8, tile_overlap=4)[0]
        tiled_shapes = shapes[n_full:]
        one = semantic2img(public, seg, seeds=[0], settings=FAST, tile_size=16)[0]
    finally:
        public.model.diffusion_model._forward_pre_hooks.clear()
    assert shapes[:n_full] == [(1, 6, 8, 16)] * 2                                  # 2 steps at full size
    assert len(tiled_shapes) == 2 * 3 and set(tiled_shapes) == {(1, 6, 8, 8)}     # 3 tiles of 8×8 per step
    assert full.size == tiles.size == (64, 32)
    assert np.array_equal(np.asarray(full), np.asarray(one))


def test_tiles_by_itself_when_one_pass_would_not_fit(models, monkeypatch):
    """With no tile option, a map whose one-pass UNet activations exceed the device's memory runs in native tiles
    (the result equals an explicit native tiling), instead of being refused."""
    import ldmcli.sampling.memory as memory
    public, _ = models
    seg = _map(32, 64, 182, seed=2)
    real = memory.unet_bytes       # x1000: the UNet dominates memory, as in a full-size model (the tiny VAE here)
    monkeypatch.setattr(memory, "unet_bytes", lambda *a, **k: 1000 * real(*a, **k))
    whole = memory.unet_bytes(public.cfg.unet, 8, 16, 1, public.dtype.itemsize)
    tile = memory.unet_bytes(public.cfg.unet, 8, 8, 1, public.dtype.itemsize)
    assert tile < whole
    explicit = semantic2img(public, seg, seeds=[0], settings=FAST, tile_size=8)[0]
    monkeypatch.setattr(memory, "available_memory", lambda device: ((tile + whole) // 2, "test device"))
    shapes = []
    public.model.diffusion_model.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    try:
        auto = semantic2img(public, seg, seeds=[0], settings=FAST)[0]
    finally:
        public.model.diffusion_model._forward_pre_hooks.clear()
    assert set(shapes) == {(1, 6, 8, 8)}
    assert np.array_equal(np.asarray(auto), np.asarray(explicit))


def test_bad_task_inputs(models):
    public, _ = models
    with pytest.raises(InputError, match=r"class id\(s\) 182, 200 outside 0-181"):
        semantic2img(public, np.array([[182, 200], [0, 1]]).repeat(8, 0).repeat(8, 1), seeds=[0], settings=FAST)
    with pytest.raises(UsageError, match="no unconditional input"):
        semantic2img(public, _map(8, 8, 182), seeds=[0], settings=SamplerSettings(steps=1, guidance_scale=2.0))
    with pytest.raises(UsageError, match="needs a segmentation map"):
        run_job("semantic2img", public, Job(), [0], FAST, None)


def test_run_job_palette(models, tmp_path):
    _, named = models
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[4:12, 4:12] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    (tmp_path / "p.json").write_text(json.dumps({"#ff0000": "circle", "#000000": "background"}))
    job = Job(segmap=str(tmp_path / "c.png"), extra={"palette": str(tmp_path / "p.json")})
    assert run_job("semantic2img", named, job, [0], FAST, None)[0].size == (24, 16)


def test_list_labels(models):
    public, named = models
    assert list_labels(named) == list(NAMES)
    with pytest.raises(UsageError, match="no class names to list"):
        list_labels(public)


# --- CLI --------------------------------------------------------------------------------------------------------------
def _assert_fails(r, out, *fragments):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr
    assert not out.exists() or not any(out.rglob("*.png"))


def test_cli_index_map(files, tmp_path):
    Image.fromarray(_map(20, 28, 182).astype(np.uint8), mode="L").save(tmp_path / "m.png")
    out = tmp_path / "out"
    r = ldm("semantic2img", tmp_path / "m.png", "--ckpt", files["tiny-semantic2img"], "--steps", 2, "-n", 2,
            "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 2 and all(Image.open(p).size == (28, 20) for p in paths)


def test_cli_tile_options(files, tmp_path):
    Image.fromarray(_map(32, 64, 182, seed=2).astype(np.uint8), mode="L").save(tmp_path / "m.png")
    runs = {}
    for name, extra in (("full", []), ("tiled", ["--tile-size", 8, "--tile-overlap", 4])):
        r = ldm("semantic2img", tmp_path / "m.png", "--ckpt", files["tiny-semantic2img"], "--steps", 2,
                "-o", tmp_path / f"{name}.png", "-q", *extra)
        assert r.exit_code == 0, r.stderr
        runs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert runs["full"].shape == runs["tiled"].shape == (32, 64, 3)
    assert not np.array_equal(runs["full"], runs["tiled"])
    bad = ldm("semantic2img", tmp_path / "m.png", "--ckpt", files["tiny-semantic2img"], "--tile-size", 1,
              "-o", tmp_path / "bad.png", "-q")
    assert bad.exit_code == 2 and "tile size" in bad.stderr and not (tmp_path / "bad.png").exists()


def test_cli_colour_map_with_palette(files, tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (0, 128, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    (tmp_path / "p.txt").write_text("background 0 0 0\nsquare #008000\n")
    out = tmp_path / "out"
    r = ldm("semantic2img", tmp_path / "c.png", "--palette", tmp_path / "p.txt",
            "--ckpt", files["tiny-semantic2img-named"], "--steps", 1, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert Image.open(r.stdout.strip()).size == (16, 16)


def test_cli_batch_palette_paths(files, tmp_path, monkeypatch):
    """--from-file: a job's relative segmap and `extra` palette are found beside the job file whatever the working
    directory, and a --palette given on the command line applies to every job of the file."""
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (0, 128, 0)
    Image.fromarray(rgb).save(jobs_dir / "c.png")
    (jobs_dir / "p.txt").write_text("background 0 0 0\nsquare #008000\n")
    (jobs_dir / "jobs.jsonl").write_text(json.dumps({"segmap": "c.png", "extra": {"palette": "p.txt"}}) + "\n")
    (jobs_dir / "bare.jsonl").write_text(json.dumps({"segmap": "c.png"}) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    common = ["--ckpt", files["tiny-semantic2img-named"], "--steps", 1, "-q"]
    r = ldm("semantic2img", "--from-file", jobs_dir / "jobs.jsonl", *common, "-o", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    assert Image.open(r.stdout.strip()).size == (16, 16)
    r = ldm("semantic2img", "--from-file", jobs_dir / "bare.jsonl", "--palette", jobs_dir / "p.txt", *common,
            "-o", tmp_path / "b")
    assert r.exit_code == 0, r.stderr
    r = ldm("semantic2img", "--from-file", jobs_dir / "bare.jsonl", *common, "-o", tmp_path / "c")
    assert r.exit_code == 2 and "not class ids" in r.stderr, (r.exit_code, r.stderr)  # every job failed: 2


def test_cli_batch_checks_files_before_loading(files, tmp_path, monkeypatch):
    """Jobs whose input files are missing fail one line each before the model is loaded; when no job is left the
    model is never loaded; the good jobs of a mixed batch still run (exit 3: some failed)."""
    import ldmcli.cli.runner
    Image.fromarray(_map(16, 16, 7).astype(np.uint8), mode="L").save(tmp_path / "good.png")
    (tmp_path / "adir").mkdir()
    bad = [{"segmap": "missing.png"}, {"segmap": "adir"}, {"segmap": "good.png", "extra": {"palette": "nope.json"}}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(j) + "\n" for j in bad))
    (tmp_path / "mixed.jsonl").write_text(json.dumps({"segmap": "missing.png"}) + "\n"
                                          + json.dumps({"segmap": "good.png"}) + "\n")
    loaded = []
    real = ldmcli.cli.runner.load_model
    monkeypatch.setattr(ldmcli.cli.runner, "load_model", lambda *a: loaded.append(1) or real(*a))
    common = ["--ckpt", files["tiny-semantic2img-named"], "--steps", 1, "-q"]
    r = ldm("semantic2img", "--from-file", tmp_path / "bad.jsonl", *common, "-o", tmp_path / "out")
    assert r.exit_code == 2 and not loaded, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and "job 1: segmap" in lines[0] and "missing.png: no such file" in lines[0]
    assert "adir: is a directory" in lines[1] and "job 3: palette" in lines[2] and "nope.json" in lines[2]
    r = ldm("semantic2img", "--from-file", tmp_path / "mixed.jsonl", *common, "-o", tmp_path / "out")
    assert r.exit_code == 3 and loaded == [1], (r.exit_code, r.stderr)
    assert len(r.stdout.split()) == 1 and "job 1: segmap" in r.stderr
    assert not (tmp_path / "out").exists() or len(list((tmp_path / "out").glob("*.png"))) == 1


@pytest.mark.parametrize("case", ["ids", "colour", "rgb without palette", "bad palette", "missing", "not an image"])
def test_cli_errors(files, tmp_path, case):
    out = tmp_path / "out"
    m = tmp_path / "m.png"
    args, fragments = [m], []
    if case == "ids":
        Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(m)
        fragments = ["class id(s) 200 outside 0-6", "m.png"]
    elif case == "colour":
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(m)
        (tmp_path / "p.json").write_text('{"#000000": 0}')
        args, fragments = [m, "--palette", tmp_path / "p.json"], ["not in the palette: (7, 7, 7)"]
    elif case == "rgb without palette":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(m)
        fragments = ["holds colours, not class ids"]
    elif case == "bad palette":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(m)
        (tmp_path / "p.json").write_text('{"#000000": 0')
        args, fragments = [m, "--palette", tmp_path / "p.json"], ["invalid JSON", "p.json"]
    elif case == "missing":
        fragments = ["m.png: no such file"]
    else:
        m.write_text("not a png")
        fragments = ["not an image file"]
    r = ldm("semantic2img", *args, "--ckpt", files["tiny-semantic2img-named"], "--steps", 1, "-o", out, "-q")
    _assert_fails(r, out, *fragments)


def test_cli_list_labels(files):
    r = ldm("semantic2img", "--list-labels", "--ckpt", files["tiny-semantic2img-named"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == [f"{i}\t{n}" for i, n in enumerate(NAMES)]
    r = ldm("semantic2img", "--list-labels", "--ckpt", files["tiny-semantic2img"])
    assert r.exit_code == 2 and "no class names to list" in r.stderr and "0-181" in r.stderr and r.stdout == ""
