"""The benchmark's CPU mode: one classifier-free-guidance UNet step and one VAE decode, ldmcli vs diffusers.

    python -m benchmarks.bench --cpu                       # SD1.5 at 512², bfloat16 and float32
    python -m benchmarks.bench --cpu --dtypes bfloat16 --repeats 3

Both sides hold the same random weights (benchmarks/bench.py `build`) and run interleaved in one process (`_rounds`:
each round calls every side once, in an order that rotates), each in the layout ldmcli picks for the dtype
(`loading.prepare_for_cpu`: channels-last for bf16) and, as the column `_contiguous`, in the plain layout, so the
table shows what the layout buys. Each record carries seconds per call (median over the rounds, and the fastest),
the ratio diffusers/ldmcli (the median of the rounds' own ratios), GFLOP/s from torch's flop counter, and the max/mean
abs difference of the two sides' outputs (UNet ε and decoded image), so speed never comes from skipping work.
Interleaving matters on shared hosts: on one, the same bf16 matmul swung between 620 and 1620 GFLOP/s for seconds at
a time, so sides timed one after the other could differ by a factor of two that was not theirs.

OpenVINO (not a dependency) is timed when installed: our own modules, converted with `openvino.convert_model` from a
float32 copy holding exactly the weights our side runs (for bf16, the bf16-rounded values) and compiled for the CPU
at the same inference precision; the record gives its time, our time over its time, and how far its outputs are from
ours. `--cpu-compile` adds our modules under torch.compile with Inductor's CPU freezing (weights folded and packed for
oneDNN): the first call's seconds (the compilation) and the break-even, the number of calls after which the compile
has paid for itself.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import statistics
import time

import torch

from ldmcli.loading import presets
from ldmcli.models import config as C

_TINY = presets.SD1.with_(
    unet=C.UNetConfig(4, 4, model_channels=32, channel_mult=(1, 2), attention_resolutions=(1, 2), num_heads=4,
                      legacy=False, context_dim=32),
    first_stage=C.AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), resolution=32),
    cond_stage=C.CLIPTextConfig(width=32, layers=1, heads=4, mlp_dim=64), latent_size=16)


def _rounds(fns: dict, repeats: int, clock=time.perf_counter) -> dict:
    """{name: [seconds of each round]}: after one warm-up call each (oneDNN primitive creation, allocator),
    `repeats` rounds that call every function once, the order rotating from round to round, so that a slow spell of
    the host falls on the sides of a comparison alike and no side always runs first."""
    names = list(fns)
    for name in names:
        fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = clock()
            fns[name]()
            times[name].append(clock() - t0)
    return times


def _compare(times: dict, a: str, b: str) -> float:
    """The median over the rounds of each round's a/b time ratio: what a slow spell of the host cancels out of."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _inputs(cfg: C.ModelConfig, dtype, seed: int = 1):
    """The CFG batch of one image (x twice, t twice, uncond + cond contexts) and one latent to decode."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.latent_size
    x = torch.randn(1, cfg.latent_channels, s, s, generator=g).to(dtype).repeat(2, 1, 1, 1)
    ctx = torch.randn(2, 77, cfg.unet.context_dim, generator=g).to(dtype)
    z = torch.randn(1, cfg.latent_channels, s, s, generator=g).to(dtype)
    return x, torch.tensor([500, 500]), ctx, z


def _seconds(s: float) -> float:
    """Four significant digits: milliseconds would round a tiny model's call of a few ms to a wrong ratio."""
    return float(f"{s:.4g}")


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple:
    d = (a.float() - b.float()).abs()
    return round(d.max().item(), 5), round(d.mean().item(), 6)


def _layout(modules, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in modules:
        m.to(memory_format=fmt)


class _Decode(torch.nn.Module):
    """The first stage's decode as a module's forward (what OpenVINO and torch.compile take)."""

    def __init__(self, first_stage):
        super().__init__()
        self.first_stage = first_stage

    def forward(self, z):
        return self.first_stage.decode(z)


def _openvino(module: torch.nn.Module, example: tuple, dtype):
    """`module` compiled by OpenVINO for this CPU at `dtype`'s precision, from a float32 copy of its weights."""
    import openvino as ov
    with torch.inference_mode(False), torch.no_grad():     # its tracer cannot take inference tensors
        exact = copy.deepcopy(module).float()
        model = ov.convert_model(exact, example_input=tuple(e.float() if e.is_floating_point() else e
                                                            for e in example))
    hint = "bf16" if dtype == torch.bfloat16 else "f32"
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
    inputs = [e.float().numpy() if e.is_floating_point() else e.numpy() for e in example]
    return lambda: torch.from_numpy(compiled(inputs)[0])


def _compiled(module: torch.nn.Module, call):
    """`call` on `module` under torch.compile with Inductor's freezing, the option `ldm --compile` passes on the CPU
    (loading/compiling.py), given to this compile alone."""
    fast = torch.compile(module, options={"freezing": True})
    return lambda: call(fast)


def _peers(rec: dict, part: str, ours, gflop: float, repeats: int, make) -> None:
    """Time the engine `make()` builds (its build and first call timed apart) interleaved with `ours`; fill
    rec[part_*]: medians, fastest calls, and ours/its time as the median of the rounds' ratios."""
    name, build = make
    t0 = time.perf_counter()
    fn = build()
    out = fn()
    rec[f"{part}_{name}_first_call_s"] = round(time.perf_counter() - t0, 1)
    rec[f"{part}_{name}_diff_max_mean"] = _diff(out, ours())
    times = _rounds({"ours": ours, name: fn}, repeats)
    s, ours_s = statistics.median(times[name]), statistics.median(times["ours"])
    rec[f"{part}_{name}_s"] = _seconds(s)
    rec[f"{part}_{name}_min_s"] = _seconds(min(times[name]))
    rec[f"{part}_{name}_gflops"] = round(gflop / s, 1)
    rec[f"{part}_{name}_ours_s"] = _seconds(ours_s)
    rec[f"{part}_{name}_ours_min_s"] = _seconds(min(times["ours"]))
    rec[f"{part}_ours_over_{name}"] = round(_compare(times, "ours", name), 3)
    if name == "compiled":
        gain = ours_s - s
        rec[f"{part}_compiled_break_even_calls"] = round(rec[f"{part}_compiled_first_call_s"] / gain) if gain > 0 \
            else None


def bench_dtype(cfg: C.ModelConfig, dtype, repeats: int, compiled: bool = False) -> dict:
    """One record: UNet CFG step and VAE decode of both sides in `dtype`, in ldmcli's CPU layout and in plain."""
    from benchmarks.bench import build
    from ldmcli.loading import prepare_for_cpu
    model, unet, vae = build(cfg, torch.device("cpu"), dtype)
    x, t, ctx, z = _inputs(cfg, dtype)
    ours_unet = lambda: model.apply_model(x, t, c_crossattn=[ctx])
    peer_unet = lambda: unet(x, t, encoder_hidden_states=ctx).sample
    ours_vae = lambda: model.decode_first_stage(z)
    peer_vae = lambda: vae.decode(z / cfg.scale_factor).sample
    rec = {"mode": "cpu", "config": cfg.name, "dtype": str(dtype)[6:], "threads": torch.get_num_threads(),
           "latent": cfg.latent_size, "repeats": repeats,
           "openvino": _openvino_version()}
    with torch.inference_mode():
        rec["unet_gflop"] = _flops(ours_unet) / 1e9
        rec["vae_gflop"] = _flops(ours_vae) / 1e9
        rec["unet_eps_diff_max_mean"] = _diff(ours_unet(), peer_unet())
        rec["vae_image_diff_max_mean"] = _diff(ours_vae(), peer_vae())
        for layout in ("contiguous", "picked"):
            if layout == "picked":
                prepare_for_cpu(model)
                _layout((unet, vae), model.dtype == torch.bfloat16)   # the peer in the same layout
            for part, ours, peer, gflop in (("unet", ours_unet, peer_unet, rec["unet_gflop"]),
                                            ("vae", ours_vae, peer_vae, rec["vae_gflop"])):
                times = _rounds({"ours": ours, "diffusers": peer}, repeats)
                a, b = statistics.median(times["ours"]), statistics.median(times["diffusers"])
                key = f"{part}_{layout}"
                rec.update({f"{key}_ours_s": _seconds(a), f"{key}_diffusers_s": _seconds(b),
                            f"{key}_ours_min_s": _seconds(min(times["ours"])),
                            f"{key}_diffusers_min_s": _seconds(min(times["diffusers"])),
                            f"{key}_speedup": round(_compare(times, "diffusers", "ours"), 3),
                            f"{key}_ours_gflops": round(gflop / a, 1)})
        unet_module, decode_module = model.model.diffusion_model, _Decode(model.first_stage_model)
        for part, ours, module, example, call, gflop in (
                ("unet", ours_unet, unet_module, (x, t, ctx), lambda m: m(x, t, context=ctx), rec["unet_gflop"]),
                ("vae", lambda: decode_module(z), decode_module, (z,), lambda m: m(z), rec["vae_gflop"])):
            engines = []
            if rec["openvino"] != "not installed":
                engines.append(("openvino", lambda: _openvino(module, example, dtype)))
            if compiled:
                engines.append(("compiled", lambda: _compiled(module, call)))
            for make in engines:
                _peers(rec, part, ours, gflop, repeats, make)
    return rec


def _openvino_version() -> str:
    if importlib.util.find_spec("openvino") is None:
        return "not installed"
    import openvino
    return openvino.__version__


def main_cpu(args) -> list:
    cfg = _TINY if args.tiny else presets.SD1
    out = []
    for name in args.dtypes.split(","):
        rec = bench_dtype(cfg, getattr(torch, name), args.repeats, compiled=args.cpu_compile)
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out
