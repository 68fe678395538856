"""ldmcli vs diffusers, same architecture, same weights, same process, run alternately.

    python -m benchmarks.bench                    # GPU: SD1.5 512², SD2.1 768² (v), x4 upscaler 512² out
    python -m benchmarks.bench --tiny             # CPU smoke mode (what CI runs): tiny configs, 4 steps
    python -m benchmarks.bench --diffusers-compile --compile

Prints one JSON line per (config, batch): seconds per image and img/s for ldmcli and diffusers (eager, and compiled
with --diffusers-compile), the ratios, peak GPU memory of each, achieved TFLOP/s (UNet FLOPs counted with
torch.utils.flop_counter on one step), and the max abs difference of the final latents from the same noise, so speed
never comes from skipping work. Text encoders are excluded (random contexts); the loop is DDIM + CFG + VAE decode.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings

import torch

from benchmarks.oracle import ddim_scheduler, diffusers_unet, diffusers_vae
from ldmcli.models import config as C
from ldmcli.loading import presets

FULL = {"sd15-512": presets.SD1, "sd21-768": presets.SD2_V, "x4-upscaler": presets.SD_X4_UPSCALER}
_TINY_VAE = C.AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), resolution=32)
_TINY_UNET = dict(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1, 2))
TINY = {
    "sd15-512": presets.SD1.with_(
        unet=C.UNetConfig(4, 4, **_TINY_UNET, num_heads=4, legacy=False, context_dim=32), first_stage=_TINY_VAE,
        cond_stage=C.CLIPTextConfig(width=32, layers=1, heads=4, mlp_dim=64), latent_size=16),
    "sd21-768": presets.SD2_V.with_(
        unet=C.UNetConfig(4, 4, **_TINY_UNET, num_heads=-1, num_head_channels=8, legacy=False, context_dim=32,
                          use_linear_in_transformer=True), first_stage=_TINY_VAE,
        cond_stage=C.OpenCLIPTextConfig(width=32, layers=1, heads=4, mlp_dim=64), latent_size=24),
    "x4-upscaler": presets.SD_X4_UPSCALER.with_(
        unet=C.UNetConfig(7, 4, **_TINY_UNET, num_heads=4, legacy=False, context_dim=32, use_linear_in_transformer=True,
                          disable_self_attentions=(True, False), num_classes=1000), first_stage=_TINY_VAE,
        cond_stage=C.OpenCLIPTextConfig(width=32, layers=1, heads=4, mlp_dim=64), latent_size=16),
}


def random_weights_(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights with unit-variance activations (norm scales 1, fan-in scaled matrices, small biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
                p.fill_(1.0)
            else:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))


def build(cfg: C.ModelConfig, device, dtype, seed: int = 0):
    """Our model (random weights) and the diffusers peer holding the same tensors, both on `device` in `dtype`."""
    from ldmcli.models.ldm import LatentDiffusion
    model = LatentDiffusion(cfg)
    random_weights_(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    unet, vae = diffusers_unet(cfg, sd), diffusers_vae(cfg, sd)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model, unet.to(device=device, dtype=dtype).requires_grad_(False), \
        vae.to(device=device, dtype=dtype).requires_grad_(False)


def conditions(cfg: C.ModelConfig, batch: int, device, dtype, seed: int = 1):
    """Random text contexts (encoder excluded) and, for the upscaler, a low-res image and noise level."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(1, 77, cfg.unet.context_dim, generator=g).to(device, dtype).expand(batch, -1, -1)
    unc = torch.randn(1, 77, cfg.unet.context_dim, generator=g).to(device, dtype).expand(batch, -1, -1)
    extra = {}
    if cfg.conditioning_key == "hybrid-adm":
        lr = torch.rand(1, 3, cfg.latent_size, cfg.latent_size, generator=g).to(device, dtype) * 2 - 1
        extra = {"c_concat": [lr.expand(batch, -1, -1, -1)], "y": torch.full((batch,), 20, device=device)}
    return ({"c_crossattn": [ctx], **extra}, {"c_crossattn": [unc], **extra})


def run_ours(model, cond, uncond, seeds, steps, scale):
    from ldmcli.sampling.pipeline import sample_latents
    from ldmcli.sampling.settings import SamplerSettings
    settings = SamplerSettings(sampler="ddim", steps=steps, guidance_scale=scale, eta=0.0)
    shape = (model.cfg.latent_channels, model.cfg.latent_size, model.cfg.latent_size)
    z = sample_latents(model, cond, uncond, shape, seeds, settings)
    with torch.inference_mode():
        return z, model.decode_first_stage(z)


def run_diffusers(cfg, unet, vae, cond, uncond, seeds, steps, scale, device, dtype):
    from ldmcli.sampling.noise import initial_noise
    sched = ddim_scheduler(cfg)
    sched.set_timesteps(steps)
    x = initial_noise((len(seeds), cfg.latent_channels, cfg.latent_size, cfg.latent_size), seeds, device=device)
    ctx = torch.cat([uncond["c_crossattn"][0], cond["c_crossattn"][0]])
    concat = cond.get("c_concat", [None])[0]
    labels = torch.cat([cond["y"], cond["y"]]) if "y" in cond else None
    with torch.inference_mode():
        for t in sched.timesteps:
            inp = torch.cat([x, x]).to(dtype)
            if concat is not None:
                inp = torch.cat([inp, torch.cat([concat, concat])], dim=1)
            out = unet(inp, t, encoder_hidden_states=ctx, class_labels=labels).sample.float()
            out_u, out_c = out.chunk(2)
            x = sched.step(out_u + scale * (out_c - out_u), t, x).prev_sample
        return x, vae.decode((x / cfg.scale_factor).to(dtype)).sample


def timed(fn, device, repeats: int):
    """Median wall seconds of `repeats` calls and the peak GPU memory (GiB) they reached."""
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def unet_flops_per_image_step(model, cond, uncond) -> float:
    """FLOPs of one CFG UNet step for one image (the batch of 2: uncond + cond), by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = model.cfg
    x = torch.zeros(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size, device=model.device,
                    dtype=next(model.parameters()).dtype)
    c = {k: [v[0][:1]] if isinstance(v, list) else v[:1] for k, v in cond.items()}
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.apply_model(torch.cat([x, x]), torch.tensor([500, 500], device=model.device),
                          **{k: ([torch.cat([v[0], v[0]])] if isinstance(v, list) else torch.cat([v, v]))
                             for k, v in c.items()})
    return float(counter.get_total_flops())


def bench_config(name, cfg, args, device, dtype):
    model, unet, vae = build(cfg, device, dtype)
    if args.compile:
        from ldmcli.loading.compiling import compile_unet
        compile_unet(model)                                      # what `ldm ... --compile` does
    peers = {"diffusers": unet}
    if args.diffusers_compile:
        peers["diffusers_compiled"] = torch.compile(unet)
    flops = unet_flops_per_image_step(model, *conditions(cfg, 1, device, dtype))
    for batch in args.batches:
        cond, uncond = conditions(cfg, batch, device, dtype)
        seeds = list(range(batch))
        ours_fn = lambda: run_ours(model, cond, uncond, seeds, args.steps, args.scale)
        peer_fns = {k: (lambda u=u: run_diffusers(cfg, u, vae, cond, uncond, seeds, args.steps, args.scale,
                                                  device, dtype)) for k, u in peers.items()}
        t_compile = time.perf_counter()
        z_ours, _ = ours_fn()                                    # warm-up (and compilation when asked)
        t_compile = time.perf_counter() - t_compile
        z_peer = {k: fn()[0] for k, fn in peer_fns.items()}
        ours_s, ours_mem = timed(ours_fn, device, args.repeats)
        rec = {"config": name, "batch": batch, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
               "steps": args.steps, "guidance": args.scale, "tiny": args.tiny, "compile": args.compile,
               "ours_s_per_image": ours_s / batch, "ours_s_per_batch": ours_s, "ours_img_per_s": batch / ours_s,
               "ours_peak_gib": ours_mem, "ours_first_call_s": t_compile,
               "ours_tflops": flops * args.steps * batch / ours_s / 1e12}
        for k, fn in peer_fns.items():
            s, mem = timed(fn, device, args.repeats)
            rec.update({f"{k}_s_per_image": s / batch, f"{k}_img_per_s": batch / s, f"{k}_peak_gib": mem,
                        f"speedup_vs_{k}": s / ours_s,
                        f"max_abs_latent_diff_vs_{k}": (z_ours.float() - z_peer[k].float()).abs().max().item()})
        tol = 1e-3 if dtype == torch.float32 else 5e-2 * max(1.0, z_ours.float().abs().max().item())
        rec["latent_tolerance"] = tol
        rec["correct"] = all(rec[f"max_abs_latent_diff_vs_{k}"] <= tol for k in peers)
        print(json.dumps(rec), flush=True)
        yield rec


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny configs on CPU (CI smoke mode)")
    p.add_argument("--cpu", action="store_true", help="CPU mode (benchmarks/cpu.py): SD1.5 UNet CFG step and VAE "
                   "decode at 512², ldmcli vs diffusers (with --tiny: a tiny config)")
    p.add_argument("--dtypes", default="bfloat16,float32", help="--cpu: comma list of bfloat16, float32")
    p.add_argument("--cpu-compile", action="store_true", help="--cpu: also time our modules under torch.compile "
                   "with Inductor's freezing (minutes of compilation at SD size)")
    p.add_argument("--configs", default=",".join(FULL), help=f"comma list of {', '.join(FULL)}")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--compile", action="store_true", help="torch.compile our UNet")
    p.add_argument("--diffusers-compile", action="store_true", help="also time diffusers with torch.compile")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        args.steps, args.repeats = min(args.steps, 4), min(args.repeats, 2)
    return args


def main(argv=None) -> list:
    args = parse(argv if argv is not None else sys.argv[1:])
    import diffusers
    diffusers.utils.logging.set_verbosity_error()    # its dtype-cast notices would drown the JSON lines
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
    if args.cpu:
        from benchmarks.cpu import main_cpu
        return main_cpu(args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(
        args.dtype, torch.float16 if device.type == "cuda" else torch.float32)
    table = TINY if args.tiny else FULL
    torch.manual_seed(0)
    out = []
    for name in args.configs.split(","):
        if name not in table:
            sys.exit(f"unknown config {name!r}; choose from {', '.join(table)}")
        out.extend(bench_config(name, table[name], args, device, dtype))
    return out


if __name__ == "__main__":
    main()
