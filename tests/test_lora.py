"""LoRA: merged weights give diffusers' `load_lora_weights` outputs (kohya and PEFT layouts, UNet incl. LoCon convs,
SD 1 CLIP and SD 2 OpenCLIP text encoders); restore is bit-exact; bad files are refused in one line; prompt tags;
the CLI batch mixing LoRA and no-LoRA jobs gives the images of separate runs; metadata and replay."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldmcli.errors import UsageError
from ldmcli.loading.lora import (apply_loras, extract_lora_tags, group_keys, lora_hash, parse_spec, restore)
from tiny import SD1_TINY, SD2_TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

UNET_ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def diffusers_modules(model, convs: bool) -> dict:
    """diffusers module name -> its weight's shape, for the LoRA-able layers of our tiny model (attention, proj,
    text encoder; with `convs` the LoCon layers: ResBlock convs, time_emb_proj, shortcuts, resamplers)."""
    from ldmcli.loading.lora_keys import lora_targets
    params = dict(model.named_parameters())
    out = {}
    for name, t in lora_targets(model).items():
        keep = (name.startswith("text_encoder.") and name.endswith(TE)) or \
            (".attentions." in name and (name.endswith(UNET_ATTN) or name.endswith(("proj_in", "proj_out")))) or \
            (convs and any(s in name for s in ("resnets", "samplers")))
        if keep:
            shape = params[t.param].shape
            out[name] = (t.rows[1] - t.rows[0],) + tuple(shape[1:]) if t.rows else tuple(shape)
    return out


def random_lora(modules: dict, layout: str, seed: int = 0, rank: int = 4) -> dict:
    """Random LoRA tensors in the `kohya` or `peft` layout. kohya files get α = r/2 everywhere (diffusers drops
    per-module alphas that differ: its alpha_pattern keys do not match its attention modules); PEFT files none
    (α = r: diffusers keeps their scale in adapter metadata)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in sorted(modules.items()):
        kernel = tuple(shape[2:])
        down = torch.randn((rank, shape[1]) + kernel, generator=g) * 0.3
        up = torch.randn((shape[0], rank) + (1,) * len(kernel), generator=g) * 0.3
        if layout == "kohya":
            head, _, rest = name.partition(".")
            key = f"lora_{'unet' if head == 'unet' else 'te'}_" + rest.replace(".", "_")
            sd.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                       f"{key}.alpha": torch.tensor(rank / 2)})
        else:
            sd.update({f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up})
    return sd


def write(sd: dict, path) -> str:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


# ---- the diffusers oracle ------------------------------------------------------------------------------------------
def diffusers_unet(model):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from test_unet import diffusers_twin
    unet = diffusers_twin(model.cfg.unet)
    sd = {k: v for k, v in model.state_dict().items() if k.startswith("model.diffusion_model.")}
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, unet.config), strict=True)
    return unet


def diffusers_text(model):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig as HFConfig, CLIPTextModel
    c = model.cfg.cond_stage
    sd = {k: v for k, v in model.state_dict().items() if k.startswith("cond_stage_model.")}
    openclip = model.cfg is SD2_TINY
    layout = convert_open_clip_checkpoint(None, sd) if openclip else convert_ldm_clip_checkpoint(sd)
    cfg = HFConfig(vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.mlp_dim,
                   num_hidden_layers=len([k for k in layout if k.endswith("self_attn.q_proj.weight")]),
                   num_attention_heads=c.heads, max_position_embeddings=77,
                   hidden_act="gelu" if openclip else "quick_gelu", attn_implementation="eager")
    te = CLIPTextModel(cfg).eval()
    prefix = "" if "embeddings.token_embedding.weight" in te.state_dict() else "text_model."
    te.load_state_dict({prefix + k.removeprefix("text_model."): v for k, v in layout.items()
                        if k != "text_projection.weight"}, strict=True)
    return te


def diffusers_with_lora(model, path: str, weight: float):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader
    unet, te = diffusers_unet(model), diffusers_text(model)
    state, alphas = Loader.lora_state_dict(path)
    Loader.load_lora_into_unet(state, alphas, unet=unet, adapter_name="x")
    Loader.load_lora_into_text_encoder(state, alphas, text_encoder=te, prefix="text_encoder",
                                       adapter_name="x")
    from peft.tuners.tuners_utils import BaseTunerLayer
    for m in list(unet.modules()) + list(te.modules()):      # the LoRA weight, as A1111's multiplier
        if isinstance(m, BaseTunerLayer):
            m.scale_layer(weight)
    return unet, te


def outputs(model, unet=None, te=None):
    """(UNet ε, text hidden states) of ours, or of diffusers' modules when given, on fixed inputs."""
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, model.cfg.unet.context_dim, generator=g)
    tokens = torch.randint(0, model.cfg.cond_stage.vocab_size, (2, 77), generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        if unet is None:
            eps = model.model.diffusion_model(x, t, context=ctx)
            hidden = model.cond_stage_model(tokens)
        else:
            eps = unet(x, t, encoder_hidden_states=ctx).sample
            out = te(input_ids=tokens, output_hidden_states=True)
            penultimate = model.cfg.cond_stage.layer == "penultimate"
            final_ln = getattr(te, "text_model", te).final_layer_norm
            hidden = final_ln(out.hidden_states[-2]) if penultimate else out.last_hidden_state
    return eps, hidden


@pytest.mark.parametrize("cfg,layout,convs,weight", [
    (SD1_TINY, "kohya", False, 1.0), (SD1_TINY, "kohya", True, 0.7), (SD1_TINY, "peft", True, 0.6),
    (SD2_TINY, "kohya", True, 0.8)], ids=["sd1-kohya", "sd1-kohya-locon", "sd1-peft", "sd2-kohya-locon"])
def test_matches_diffusers_load_lora_weights(tmp_path, cfg, layout, convs, weight):
    """SD 2's OpenCLIP q/k/v LoRAs land in row slices of its fused in_proj_weight."""
    pytest.importorskip("peft")
    model = tiny_model(cfg, seed=1)
    path = write(random_lora(diffusers_modules(model, convs), layout), tmp_path / "x.safetensors")
    base_eps, base_hidden = outputs(model)
    apply_loras(model, [parse_spec(f"{path}:{weight}")])
    eps, hidden = outputs(model)
    ref_eps, ref_hidden = outputs(model, *diffusers_with_lora(tiny_model(cfg, seed=1), path, weight))
    assert (eps - base_eps).abs().max() > 1e-2 and (hidden - base_hidden).abs().max() > 1e-2, "LoRA changed nothing"
    torch.testing.assert_close(eps, ref_eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-4, rtol=1e-4)


# ---- merging and restoring -----------------------------------------------------------------------------------------
def test_restore_is_bit_exact_and_sets_replace_each_other(tmp_path):
    model = tiny_model(SD1_TINY, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = diffusers_modules(model, convs=True)
    a = write(random_lora(modules, "kohya", seed=1), tmp_path / "a.safetensors")
    b = write(random_lora(modules, "peft", seed=2), tmp_path / "b.safetensors")
    apply_loras(model, [parse_spec(a)])
    with_a = {k: v.clone() for k, v in model.state_dict().items()}
    apply_loras(model, [parse_spec(a)])                      # the same set: nothing merged twice
    assert all(torch.equal(with_a[k], v) for k, v in model.state_dict().items())
    apply_loras(model, [parse_spec(f"{b}:0.5"), parse_spec(f"{a}:-1")])
    apply_loras(model, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    apply_loras(model, [parse_spec(a)])                      # A again, after B: what A alone gave
    assert all(torch.equal(with_a[k], v) for k, v in model.state_dict().items())
    restore(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_varying_alphas_scale_each_layer_by_alpha_over_rank(tmp_path):
    model = tiny_model(SD1_TINY, seed=2)
    name = "lora_te_text_model_encoder_layers_1_mlp_fc1"
    w = model.cond_stage_model.transformer.text_model.encoder.layers[1].mlp.fc1.weight
    original = w.clone()
    down, up = torch.randn(3, w.shape[1]), torch.randn(w.shape[0], 3)
    path = write({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.5)},
                 tmp_path / "a.safetensors")
    apply_loras(model, [parse_spec(f"{path}:0.8")])
    torch.testing.assert_close(w, original + 0.8 * (1.5 / 3) * up @ down)


@pytest.mark.parametrize("keys,message", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": (4, 32)}, "LyCORIS"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1": (4, 4)}, "LyCORIS"),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 32)}, "SDXL"),
    ({"lora_unet_x.lora_down.weight": (4, 32), "model.weird": (2,)}, "unknown key 'model.weird'"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}, "lacks its up matrix"),
])
def test_unreadable_layouts_are_refused_in_one_line(keys, message):
    with pytest.raises(UsageError, match=message) as e:
        group_keys(list(keys), "x.safetensors")
    assert "\n" not in str(e.value)


def test_wrong_family_and_unknown_layers_refused_by_shape_before_merging(tmp_path):
    model = tiny_model(SD1_TINY, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ok = random_lora(diffusers_modules(model, convs=False), "kohya")
    wide = random_lora({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (64, 64)}, "kohya")  # SD 2 width
    path = write({**ok, **wide}, tmp_path / "sd2.safetensors")
    with pytest.raises(UsageError, match=r"does not fit this model: .*q_proj is \[32, 32\] here.*SD 2 on SD 1"):
        apply_loras(model, [parse_spec(path)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ghost = write(random_lora({"unet.down_blocks.7.attentions.0.proj_in": (32, 32)}, "kohya"),
                  tmp_path / "g.safetensors")
    with pytest.raises(UsageError, match="no layer lora_unet_down_blocks_7_attentions_0_proj_in"):
        apply_loras(model, [parse_spec(ghost)])


# ---- tags, specs, hashes -------------------------------------------------------------------------------------------
def test_extract_lora_tags():
    assert extract_lora_tags("a cat, <lora:style_a:0.6> in a hat <lora:b>") == ("a cat,  in a hat ",
                                                                                [("style_a", 0.6), ("b", 1.0)])
    assert extract_lora_tags("(a:1.2) [b|c] <hypernet:x:1>") == ("(a:1.2) [b|c] <hypernet:x:1>", [])
    with pytest.raises(UsageError, match="not a number"):
        extract_lora_tags("<lora:a:heavy>")


def test_parse_spec(tmp_path):
    assert parse_spec(f"{tmp_path}/a.safetensors:0.5") == (f"{tmp_path}/a.safetensors", 0.5)
    assert parse_spec(f"{tmp_path}/a.safetensors") == (f"{tmp_path}/a.safetensors", 1.0)
    assert parse_spec(f"{tmp_path}/a.safetensors:-1e-1").weight == -0.1
    assert parse_spec(f"{tmp_path}/odd:name.safetensors").path.endswith("odd:name.safetensors")


def test_lora_hash_is_a1111s_addnet_hash(tmp_path):
    import hashlib
    from safetensors.torch import save_file
    path = tmp_path / "h.safetensors"
    save_file({"lora_unet_a.alpha": torch.tensor(1.0)}, str(path), {"ss_output_name": "h"})
    data = path.read_bytes()
    body = data[8 + int.from_bytes(data[:8], "little"):]       # the tensors, not the header's metadata
    assert lora_hash(str(path)) == hashlib.sha256(body).hexdigest()[:12]
    save_file({"lora_unet_a.alpha": torch.tensor(1.0)}, str(path), {"sshs_model_hash": "ABCDEF0123456789" * 4})
    assert lora_hash(str(path)) == "abcdef012345"


# ---- the CLI -------------------------------------------------------------------------------------------------------
def ldm(*args):
    from typer.testing import CliRunner
    from ldmcli.cli.app import app
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    """A kohya LoCon file for the tiny SD1 checkpoint, in a --lora-dir of its own."""
    folder = tmp_path_factory.mktemp("loras")
    sd = random_lora(diffusers_modules(tiny_model(SD1_TINY), convs=True), "kohya", seed=4, rank=2)
    return write(sd, folder / "style.safetensors")


def path_text(path) -> str:
    from PIL import Image
    return Image.open(path).info["parameters"]


def pixels(path) -> bytes:
    from PIL import Image
    return Image.open(path).tobytes()


def test_batch_mixing_lora_and_plain_jobs_equals_separate_runs(tmp_path, sd1_file, style):
    common = ("--ckpt", sd1_file, "--steps", 2, "--seed", 5, "-q", "--dtype", "float32")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"prompt": "a cat", "seed": 5}, {"prompt": "a cat", "seed": 5, "extra": {"lora": [f"{style}:0.9"]}},
        {"prompt": "a cat", "seed": 5}]))     # one seed: a batch's jobs otherwise take the next seeds
    batch = ldm("txt2img", "--from-file", jobs, "-o", tmp_path / "batch", *common).stdout.split()
    plain = ldm("txt2img", "a cat", "-o", tmp_path / "plain", *common).stdout.strip()
    lora = ldm("txt2img", "a cat", "--lora", f"{style}:0.9", "-o", tmp_path / "lora", *common).stdout.strip()
    assert len(batch) == 3
    assert pixels(batch[0]) == pixels(plain) and pixels(batch[2]) == pixels(plain)
    assert pixels(batch[1]) == pixels(lora) != pixels(plain)


def test_prompt_tag_record_a1111_and_replay(tmp_path, sd1_file, style):
    from ldmcli.io.png import read_metadata
    common = ("--ckpt", sd1_file, "--steps", 2, "--seed", 5, "-q", "--dtype", "float32")
    tagged = ldm("txt2img", "a cat <lora:style:0.9>", "--lora-dir", Path(style).parent, "-o", tmp_path / "t", *common)
    assert tagged.exit_code == 0, tagged.stderr
    by_option = ldm("txt2img", "a cat ", "--lora", f"{style}:0.9", "-o", tmp_path / "o", *common).stdout.strip()
    path = tagged.stdout.strip()
    assert pixels(path) == pixels(by_option)        # the tag is cut out of the prompt, the LoRA merged
    meta = read_metadata(path)
    rec = meta["ldmcli"]
    assert rec["prompt"] == "a cat <lora:style:0.9>"   # as A1111 keeps it
    assert rec["loras"] == [{"name": "style", "path": style, "weight": 0.9, "hash": lora_hash(style)}]
    assert f'Lora hashes: "style: {lora_hash(style)}"' in path_text(path)
    again = ldm("replay", path, "-o", tmp_path / "r", "-q")
    assert again.exit_code == 0, again.stderr
    assert pixels(again.stdout.strip()) == pixels(path)
    again = ldm("replay", by_option, "-o", tmp_path / "r2", "-q")
    assert pixels(again.stdout.strip()) == pixels(by_option)


def test_cli_refusals_exit_2_in_one_line_before_sampling(tmp_path, sd1_file):
    common = ("--ckpt", sd1_file, "--steps", 2, "-q", "-o", tmp_path)
    wide = write(random_lora({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (64, 64)}, "kohya"),
                 tmp_path / "sd2.safetensors")
    loha = write({"lora_unet_a.hada_w1_a": torch.zeros(2, 2)}, tmp_path / "loha.safetensors")
    for args, message in [(("--lora", wide), "does not fit this model"), (("--lora", loha), "LyCORIS"),
                          (("--lora", tmp_path / "none.safetensors"), "not found"),
                          (("--lora-dir", tmp_path), "no LoRA named 'nope'")]:
        r = ldm("txt2img", "a <lora:nope>" if "--lora-dir" in args else "a", *args, *common)
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not list(tmp_path.glob("*.png"))


# ---- --compile: a UNet whose weights are frozen into compiled code takes no LoRA -------------------------------------
def test_a_unet_frozen_into_compiled_code_refuses_a_lora(tmp_path, style):
    model = tiny_model(SD1_TINY, seed=2)
    model.frozen_unet = True                      # what compile_unet(model, freeze=True) sets on the CPU
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_loras(model, [])                        # no LoRA: nothing to refuse
    with pytest.raises(UsageError, match="frozen"):
        apply_loras(model, [parse_spec(style)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("lora_job", [False, True])
def test_compile_freezes_the_weights_only_in_runs_without_loras(tmp_path, sd1_file, style, monkeypatch, lora_job):
    """The runner asks compile_unet to freeze the UNet's weights unless some job of the run merges a LoRA into them
    (a stand-in records the request; nothing is compiled)."""
    from ldmcli.loading import compiling
    asked = []

    def record(model, freeze=False):
        asked.append(freeze)
        model.frozen_unet = freeze
        return tmp_path
    monkeypatch.setattr(compiling, "compile_unet", record)
    jobs = tmp_path / "jobs.jsonl"
    extra = [{"extra": {"lora": [f"{style}:0.9"]}}] if lora_job else []
    jobs.write_text("\n".join(json.dumps(dict(prompt="a cat", **j)) for j in [{}] + extra))
    result = ldm("txt2img", "--from-file", jobs, "-o", tmp_path / "out", "--ckpt", sd1_file, "--steps", 1, "-q",
                 "--compile")
    assert result.exit_code == 0, result.stderr
    assert asked == [not lora_job]
