"""layout2img: the bounding-box token sequence against hand-computed values, layout parsing, and `ldm layout2img`
end to end.

Tiny random-weight models shaped like LDM_LAYOUT2IMG (VQ-f4 first stage, 3-channel UNet with SpatialTransformers of
depth 3, BERTEmbedder with vocabulary 8192, sequence length 92 and no tokenizer) are written as CompVis-layout
safetensors with their config in the header: one with label names in its config (like the embedded default), one
without (like the public checkpoint, whose category names are not shipped).
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ldmcli.models import config as C
from ldmcli.loading.checkpoint import load_model
from ldmcli.cli.app import app
from ldmcli.errors import InputError, UsageError
from ldmcli.cli.jobs import Job
from ldmcli.io.layout import (LayoutBox, coordinate_token, layout_tokens, normalised_boxes, parse_box, read_layout,
                           unconditional_tokens)
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.cli.inputs import run_job
from ldmcli.tasks.layout2img import layout2img, layout_condition, list_labels

VQ_F4 = C.AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 1, 2), resolution=32,
                            double_z=False, n_embed=64)
NAMES = ("red circle", "circle", "blue square", "square")
LAYOUT = C.ModelConfig(
    name="tiny-layout2img", task="layout2img", conditioning_key="crossattn",
    unet=C.UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
                      attention_resolutions=(2,), num_heads=-1, num_head_channels=16, use_spatial_transformer=True, transformer_depth=3,
                      context_dim=32),
    first_stage=VQ_F4,
    cond_stage=C.BERTConfig(n_embed=32, n_layer=2, heads=2, dim_head=16, vocab_size=8192, max_seq_len=92,
                            tokenizer="none"),
    linear_start=0.0015, linear_end=0.0205, scale_factor=1.0, latent_size=8, latent_channels=3, default_steps=2,
    default_guidance=1.0, labels=NAMES)
UNNAMED = LAYOUT.with_(name="tiny-layout2img-unnamed", labels=())
PAD = 8191
runner = CliRunner()


def ldm(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tiny_ckpt):
    """The same weights under both configs (labels named, and not)."""
    return {cfg.name: tiny_ckpt(cfg, seed=31, weights=LAYOUT) for cfg in (LAYOUT, UNNAMED)}


@pytest.fixture(scope="module")
def model(files):
    m, info = load_model(files["tiny-layout2img"])
    assert info.family == "tiny-layout2img" and not info.unexpected
    return m


# --- tokens, by hand (MODELS.md §6.4: n = int(√8192) = 90, token = round(89·y)·90 + round(89·x)) ------------------
def test_coordinate_tokens_hand_computed():
    assert coordinate_token(0.0, 0.0, 90) == 0
    assert coordinate_token(1.0, 1.0, 90) == 89 * 90 + 89 == 8099
    assert coordinate_token(0.1, 0.2, 90) == 18 * 90 + 9                # 17.8 → 18, 8.9 → 9
    assert coordinate_token(0.5, 0.6, 90) == 53 * 90 + 44               # 53.4 → 53, 44.5 → 44 (half to even)


def test_two_box_sequence_hand_computed():
    tokens = layout_tokens([(3, (0.1, 0.2, 0.5, 0.6)), (0, (0.25, 0.0, 1.0, 0.5))])
    expected = [3, 1629, 4814,                  # (0.1, 0.2) → 18·90+9; (0.5, 0.6) → 53·90+44
                0, 22, 4049]                    # (0.25, 0) → 0·90+22; (1, 0.5) → 44·90+89
    expected += [PAD] * 84                      # 28 padding triples
    expected += [0, 8099]                       # crop = the whole image: token(0, 0), token(1, 1)
    assert tokens == expected and len(tokens) == 92


def test_unconditional_tokens():
    assert unconditional_tokens() == [PAD] * 90 + [0, 8099]


def test_too_many_objects():
    with pytest.raises(UsageError, match="31 boxes; this model takes at most 30"):
        layout_tokens([(1, (0, 0, 1, 1))] * 31)


def test_model_condition_from_pixel_boxes_and_names(model):
    """Names resolved against cfg.labels (case and spacing ignored), pixels relative to 32×32."""
    boxes = [LayoutBox("Red  Circle", (0, 8, 16, 24)), parse_box("square 8 0 32 16")]
    tokens = layout_condition(model, boxes, 32, 32)
    expected = [0, 22 * 90, 67 * 90 + 44,       # (0, .25): 22.25 → 22; (.5, .75): 66.75 → 67, 44.5 → 44
                3, 22, 44 * 90 + 89]            # (.25, 0); (1, .5)
    assert tokens.tolist() == [expected + [PAD] * 84 + [0, 8099]]


# --- parsing and checks --------------------------------------------------------------------------------------------
def test_parse_box():
    b = parse_box("  big red  circle 1 2.5 3 4 ")
    assert b.label == "big red circle" and b.box == (1.0, 2.5, 3.0, 4.0)
    for bad in ("circle 1 2 3", "circle 1 2 3 x", "1 2 3 4", "c 1 2 nan 4"):
        with pytest.raises(UsageError):
            parse_box(bad)


def test_pixel_or_fraction_rule():
    frac = [LayoutBox("a", (0.0, 0.25, 0.5, 1.0))]
    assert normalised_boxes(frac, 64, 32) == [(0.0, 0.25, 0.5, 1.0)]     # all in [0, 1]: fractions
    pix = [LayoutBox("a", (0.0, 0.25, 0.5, 1.0)), LayoutBox("b", (16, 8, 64, 32))]
    assert normalised_boxes(pix, 64, 32) == [(0.0, 0.25 / 32, 0.5 / 64, 1 / 32), (0.25, 0.25, 1.0, 1.0)]
    with pytest.raises(UsageError, match=r"--box 2 \('b' \[16, 8, 65, 32\]\) lies outside the 64x32 image"):
        normalised_boxes([LayoutBox("b", (16, 8, 65, 32), "--box 2")], 64, 32)
    with pytest.raises(UsageError, match=r"box 1 \('a' \[0.5, 0, 0.5, 1\]\) is empty"):
        normalised_boxes([LayoutBox("a", (0.5, 0, 0.5, 1), "box 1")], 64, 32)


def test_read_layout(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps([{"label": "circle", "box": [1, 2, 3, 4]}, {"label": 2, "box": [0, 0, 0.5, 0.5]}]))
    boxes = read_layout(p)
    assert [(b.label, b.box) for b in boxes] == [("circle", (1, 2, 3, 4)), (2, (0, 0, 0.5, 0.5))]
    cases = {"{": "invalid JSON at line 1", '{"label": "a"}': "expected a JSON list",
             '[{"label": "a", "box": [1, 2, 3]}]': "'box' must be", '[{"label": "a", "bbox": [1, 2, 3, 4]}]':
             "unknown key 'bbox'", '[{"label": true, "box": [1, 2, 3, 4]}]': "'label' must be"}
    for text, msg in cases.items():
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            read_layout(p)
    with pytest.raises(InputError, match="No such file"):
        read_layout(tmp_path / "missing.json")


def test_unknown_label_suggests(model):
    with pytest.raises(UsageError, match=r"unknown label 'red circel'; did you mean 'red circle'"):
        layout_condition(model, [LayoutBox("red circel", (0, 0, 1, 1), "--box 1")], 32, 32)
    with pytest.raises(UsageError, match="class number 4 is out of range 0-3"):
        layout_condition(model, [LayoutBox(4, (0, 0, 1, 1), "box 1")], 32, 32)


# --- the model sees the tokens ------------------------------------------------------------------------------------
def _bert_inputs(model):
    calls = []
    model.cond_stage_model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].clone()))
    return calls


def test_guidance_uses_the_empty_layout(model):
    calls = _bert_inputs(model)
    unet = []
    model.model.diffusion_model.register_forward_pre_hook(lambda mod, args: unet.append(args[0].shape))
    try:
        out = layout2img(model, [parse_box("circle 0 0 16 16")], seeds=[0], settings=SamplerSettings(steps=1))
        layout2img(model, [parse_box("circle 0 0 16 16")], seeds=[0],
                   settings=SamplerSettings(steps=1, guidance_scale=3.0))
    finally:
        model.cond_stage_model._forward_pre_hooks.clear()
        model.model.diffusion_model._forward_pre_hooks.clear()
    assert out[0].size == (32, 32)
    assert len(calls) == 3 and calls[0].tolist() == calls[1].tolist()             # no guidance: one encoding
    assert calls[0][0, :3].tolist() == [1, 0, 44 * 90 + 44]
    assert calls[2].tolist() == [unconditional_tokens()]                          # guidance: + the empty layout
    assert unet == [(1, 3, 8, 8), (2, 3, 8, 8)]


def test_run_job_and_sizes(model, tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps([{"label": "square", "box": [0.1, 0.1, 0.9, 0.5]}]))
    job = Job(layout=str(p), width=48, height=32, extra={"boxes": ["circle 0 0 24 16"]})
    images = run_job("layout2img", model, job, [0, 1], SamplerSettings(steps=1), None)
    assert [im.size for im in images] == [(48, 32), (48, 32)]
    with pytest.raises(UsageError, match="needs a layout JSON file or at least one --box"):
        run_job("layout2img", model, Job(), [0], SamplerSettings(steps=1), None)
    with pytest.raises(UsageError, match="multiple of 8"):
        run_job("layout2img", model, Job(width=36, extra={"boxes": ["circle 0 0 1 1"]}), [0], SamplerSettings(steps=1), None)


def test_list_labels(model):
    assert list_labels(model) == list(NAMES)


# --- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_layout_file_and_boxes(files, tmp_path):
    p = tmp_path / "layout.json"
    p.write_text(json.dumps([{"label": "red circle", "box": [0, 0, 16, 16]}, {"label": 3, "box": [8, 8, 32, 24]}]))
    out = tmp_path / "out"
    r = ldm("layout2img", p, "--box", "blue square 16 0 32 8", "--ckpt", files["tiny-layout2img"], "--steps", 2,
            "-n", 2, "--seed", 5, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 2 and len(set(paths)) == 2
    from PIL import Image
    assert all(Image.open(q).size == (32, 32) for q in paths)


def test_cli_replay_keeps_size_and_boxes(files, tmp_path):
    """A --box layout at a size other than the model's: `ldm replay` regenerates the same pixels at that size."""
    from PIL import Image
    r = ldm("layout2img", "--box", "red circle 0.1 0.1 0.5 0.6", "--ckpt", files["tiny-layout2img"], "--steps", 2,
            "-H", 24, "-W", 40, "--seed", 3, "-o", tmp_path / "a.png", "-q")
    assert r.exit_code == 0, r.stderr
    again = ldm("replay", tmp_path / "a.png", "-o", tmp_path / "b.png", "-q")
    assert again.exit_code == 0, again.stderr
    first, second = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert first.size == second.size == (40, 24) and first.tobytes() == second.tobytes()


def test_cli_numeric_labels_without_names(files, tmp_path):
    out = tmp_path / "out"
    r = ldm("layout2img", "--box", "7 0 0 0.5 0.5", "--ckpt", files["tiny-layout2img-unnamed"], "--steps", 1,
            "-o", out, "-q")
    assert r.exit_code == 0, r.stderr


def _assert_fails(r, out, *fragments):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr
    assert not out.exists() or not any(out.rglob("*.png"))


@pytest.mark.parametrize("case", ["unknown", "31 boxes", "bad json", "missing", "empty box", "name, no names"])
def test_cli_errors(files, tmp_path, case):
    out = tmp_path / "out"
    ckpt = files["tiny-layout2img-unnamed" if case == "name, no names" else "tiny-layout2img"]
    p = tmp_path / "layout.json"
    args, fragments = [], []
    if case == "unknown":
        args, fragments = ["--box", "blue sqare 0 0 8 8"], ["unknown label 'blue sqare'", "did you mean 'blue square'"]
    elif case == "31 boxes":
        p.write_text(json.dumps([{"label": "circle", "box": [0, 0, 8, 8]}] * 31))
        args, fragments = [p], ["31 boxes", "at most 30"]
    elif case == "bad json":
        p.write_text('[{"label": "circle", "box": [0, 0, 8, 8]},]')
        args, fragments = [p], ["invalid JSON at line 1", str(p)]
    elif case == "missing":
        args, fragments = [tmp_path / "nope.json"], ["nope.json", "no such file"]
    elif case == "empty box":
        args, fragments = ["--box", "circle 8 8 8 16"], ["--box 1 ('circle' [8, 8, 8, 16]) is empty"]
    else:
        args, fragments = ["--box", "circle 0 0 8 8"], ["class names are not known", "class numbers 0-8190"]
    r = ldm("layout2img", *args, "--ckpt", ckpt, "--steps", 1, "-o", out, "-q")
    _assert_fails(r, out, *fragments)


def test_cli_list_labels(files):
    r = ldm("layout2img", "--list-labels", "--ckpt", files["tiny-layout2img"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "0\tred circle\n1\tcircle\n2\tblue square\n3\tsquare\n"
    r = ldm("layout2img", "--list-labels", "--ckpt", files["tiny-layout2img-unnamed"])
    assert r.exit_code == 2 and "no label names to list" in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1


def test_other_families_are_refused():
    from ldmcli.loading.presets import LDM_SEMANTIC256
    from ldmcli.tasks.layout2img import check_layout_model
    with pytest.raises(UsageError, match="not a layout-to-image model"):
        check_layout_model(LDM_SEMANTIC256)
    assert check_layout_model(C.ModelConfig("x", "layout2img", LAYOUT.unet, VQ_F4, LAYOUT.cond_stage)).max_seq_len == 92
