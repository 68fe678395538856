"""The options every generating subcommand shares, declared once: `@shared_options()` adds them to a command.

A command declares only its own arguments and options, plus an `opts` parameter that receives every value (its own
and the shared ones) as one dict for the job runner. Adding a shared option is one Annotated type and one row of
`SHARED`. Closed sets (the sampler) are checked while the command line is parsed, before anything loads.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, Optional, Tuple

import typer
from typing_extensions import Annotated

from ldmcli.sampling.table import SAMPLER_NAMES, SAMPLERS


Ckpt = Annotated[Optional[str], typer.Option("--ckpt", help="Checkpoint path (.ckpt/.safetensors) or registry "
                                             "name; default: the embedded model for this task.")]
Config = Annotated[Optional[str], typer.Option("--config", help="Preset name or original YAML config "
                                               "(overrides auto-detection).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Sampling steps (default: the family's).")]
def _sampler_name(value: str) -> str:
    """--sampler is a closed set, checked while the command line is parsed (before anything loads)."""
    if value not in SAMPLERS:
        raise typer.BadParameter(f"unknown sampler {value!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    return value


Sampler = Annotated[str, typer.Option("--sampler", parser=_sampler_name, metavar="[" + "|".join(SAMPLER_NAMES) + "]",
                                      help="Sampler (A1111 names: " + ", ".join(
                                          f"{n} = {s.label}" for n, s in SAMPLERS.items()) + ").")]
Scale = Annotated[Optional[float], typer.Option("--scale", help="Classifier-free guidance scale.")]
Eta = Annotated[Optional[float], typer.Option("--eta", help="DDIM eta (0 = deterministic).")]
Karras = Annotated[bool, typer.Option("--karras", help="Karras sigmas (dpmpp_2m, euler, euler_a).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the batch's first image, -1 for a random one; every "
                                   "later image gets the next seed (a job's own seed wins).")]
NSamples = Annotated[int, typer.Option("--n-samples", "-n", min=1, help="Images per job.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 on CPU), float32, float16, "
                                    "bfloat16.")]
Out = Annotated[str, typer.Option("--out", "-o", help="Output directory, a .png file name, or - for stdout.")]
NoEma = Annotated[bool, typer.Option("--no-ema", help="Use the non-EMA weights of a checkpoint that has both.")]
Prediction = Annotated[Optional[str], typer.Option("--prediction", help="Override eps|v (SD2 768-v vs 512).")]
FromFile = Annotated[Optional[str], typer.Option("--from-file", help="Jobs: text (a prompt per line) or JSONL; "
                                                 "- reads stdin.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout instead of paths.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or logs on stderr.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Regenerate outputs that already exist.")]
NoiseDevice = Annotated[Optional[str], typer.Option("--noise-device", help="auto (the model's device) or cpu: draw "
                                                    "all sampling noise on the CPU, so a seed gives the same image "
                                                    "on any device.")]
Vocab = Annotated[Optional[str], typer.Option("--vocab", help="Tokenizer vocabulary file (BERT vocab.txt for LDM "
                                              "text models; CLIP bpe_simple_vocab_16e6.txt.gz).")]
Height = Annotated[Optional[int], typer.Option("--height", "-H", help="Image height in pixels.")]
Width = Annotated[Optional[int], typer.Option("--width", "-W", help="Image width in pixels.")]
NegPrompt = Annotated[str, typer.Option("--negative-prompt", help="What to steer away from (CFG uncond).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet: the first step of a run pays the "
                                       "compilation (cached across runs in ~/.cache/ldmcli/inductor); pays off "
                                       "on GPUs and long batches.")]



# name -> (type, default): the order of --help
SHARED: Dict[str, Tuple[Any, Any]] = {
    "ckpt": (Ckpt, None), "config": (Config, None), "steps": (Steps, None), "sampler": (Sampler, "ddim"),
    "scale": (Scale, None), "eta": (Eta, None), "karras": (Karras, False), "seed": (Seed, 0),
    "n_samples": (NSamples, 1), "batch_size": (BatchSize, 4), "device": (Device, "auto"), "dtype": (Dtype, "auto"),
    "out": (Out, "outputs"), "no_ema": (NoEma, False), "prediction": (Prediction, None),
    "from_file": (FromFile, None), "json": (Json, False), "quiet": (Quiet, False), "overwrite": (Overwrite, False),
    "noise_device": (NoiseDevice, None), "vocab": (Vocab, None), "compile": (Compile, False),
}
TEXT_OPTIONS = ("prediction", "vocab")   # only for subcommands that can take a text model


def shared_options(*, exclude: Tuple[str, ...] = (), **defaults):
    """Decorator: the command `fn(own..., opts)` as Typer sees it, with the SHARED options (less `exclude`, with
    per-command `defaults`) after its own; Typer's values reach `fn` as its own arguments plus `opts`, a dict of
    every value."""
    def deco(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        names = {p.name for p in own}
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=defaults.get(n, d))
                 for n, (kind, d) in SHARED.items() if n not in exclude and n not in names]

        @functools.wraps(fn)
        def command(**values):
            return fn(**{n: values[n] for n in names}, opts=values)
        command.__signature__ = inspect.Signature(own + added)
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        del command.__wrapped__          # Typer must read the signature above, not fn's
        return command
    return deco


__all__ = ["SHARED", "TEXT_OPTIONS", "shared_options", "Height", "Width", "NegPrompt", "Json"]
