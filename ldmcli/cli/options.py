"""The options every generating subcommand shares, declared once: `@shared_options()` adds them to a command.

A command declares only its own arguments and options, plus an `opts` parameter that receives every value (its own
and the shared ones) as one dict for the job runner. Adding a shared option is one Annotated type and one row of
`SHARED`. Closed sets (the sampler) are checked while the command line is parsed, before anything loads.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, List, Optional, Tuple

import typer
from typing_extensions import Annotated

from ldmcli.sampling.table import SAMPLER_NAMES, SAMPLERS, SCHEDULE_LABELS, parse_sampler


Ckpt = Annotated[Optional[str], typer.Option("--ckpt", help="Checkpoint path (.ckpt/.safetensors) or registry "
                                             "name; default: the embedded model for this task.")]
Config = Annotated[Optional[str], typer.Option("--config", help="Preset name or original YAML config "
                                               "(overrides auto-detection).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Sampling steps (default: the model's, listed "
                                             "below).")]
def _sampler_name(value: str) -> str:
    """--sampler is a closed set, checked while the command line is parsed (before anything loads); an A1111 display
    name becomes the canonical name, or "name karras" style when it carries a schedule (settings split it)."""
    from ldmcli.errors import UsageError
    try:
        name, schedule = parse_sampler(value)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None
    return name if schedule is None else value


def _schedule_name(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in SCHEDULE_LABELS:
        raise typer.BadParameter(f"unknown schedule {value!r}; choose one of {', '.join(SCHEDULE_LABELS)}")
    return value


Sampler = Annotated[str, typer.Option("--sampler", parser=_sampler_name, metavar="[" + "|".join(SAMPLER_NAMES) + "]",
                                      help="Sampler (A1111 names: " + ", ".join(
                                          f"{n} = {s.label}" for n, s in SAMPLERS.items()) + ").")]
Scale = Annotated[Optional[float], typer.Option("--scale", help="Classifier-free guidance scale.")]
Eta = Annotated[Optional[float], typer.Option("--eta", help="DDIM eta (0 = deterministic).")]
Karras = Annotated[bool, typer.Option("--karras", help="Karras sigmas (= --schedule karras).")]
Schedule = Annotated[Optional[str], typer.Option("--schedule", parser=_schedule_name,
                                                 metavar="[" + "|".join(SCHEDULE_LABELS) + "]",
                                                 help="Noise schedule (default: the sampler's; `ldm samplers`).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the batch's first image, -1 for a random one; every "
                                   "later image gets the next seed (a job's own seed wins).")]
NSamples = Annotated[int, typer.Option("--n-samples", "-n", min=1, help="Images per job.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA; on CPU where it has native bf16: bf16 for "
                                    "checkpoints of 100 MB or more, and for smaller ones images of 128x128 px "
                                    "or more; else fp32), float32, float16, bfloat16.")]
Out = Annotated[str, typer.Option("--out", "-o", help="Output directory, a .png file name, or - for stdout.")]
Ema = Annotated[Optional[bool], typer.Option("--ema/--no-ema", help="Run the EMA (or the plain) UNet weights of a "
                                             "checkpoint that has both (default: as the family's reference config "
                                             "does: plain for SD 1.x/2.x, EMA for the LDM task models).")]
Prediction = Annotated[Optional[str], typer.Option("--prediction", help="Override eps|v (SD2 768-v vs 512).")]
FromFile = Annotated[Optional[str], typer.Option("--from-file", help="Jobs: text (a prompt per line) or JSONL; "
                                                 "- reads stdin.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout instead of paths.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or logs on stderr.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Regenerate outputs that already exist.")]
NoiseDevice = Annotated[Optional[str], typer.Option("--noise-device", help="auto (the model's device) or cpu: draw "
                                                    "all sampling noise on the CPU, so a seed gives the same image "
                                                    "on any device.")]
Vae = Annotated[Optional[str], typer.Option("--vae", help="A standalone VAE (.safetensors/.ckpt, CompVis or diffusers "
                                            "layout, e.g. vae-ft-mse-840000-ema-pruned) replacing the checkpoint's "
                                            "first stage.")]
Vocab = Annotated[Optional[str], typer.Option("--vocab", help="Tokenizer vocabulary file (BERT vocab.txt for LDM "
                                              "text models; CLIP bpe_simple_vocab_16e6.txt.gz).")]
Height = Annotated[Optional[int], typer.Option("--height", "-H", help="Image height in pixels.")]
Width = Annotated[Optional[int], typer.Option("--width", "-W", help="Image width in pixels.")]
NegPrompt = Annotated[str, typer.Option("--negative-prompt", help="What to steer away from (CFG uncond).")]
MatchInput = Annotated[Optional[bool], typer.Option("--match-input/--no-match-input", help="Make the result agree "
                                                    "with the input in pixels: superres back-projects onto the "
                                                    "low-res image, inpaint shifts the fill to meet the known "
                                                    "pixels seamlessly; a grey picture stays grey (inpaint: "
                                                    "without a prompt). Default: on for the embedded models, off "
                                                    "for public checkpoints (their reference output).")]
ClipSkip = Annotated[Optional[int], typer.Option("--clip-skip", min=1, help="CLIP layer the prompt is read from, "
                                              "counted from the last as A1111 does: 1 = the last, 2 = the "
                                              "penultimate (SD 2's own choice), then the final layer norm. "
                                              "SD 1.x/2.x only.")]
TextEmbedding = Annotated[Optional[List[str]], typer.Option("--embedding", metavar="FILE", help="A textual-inversion "
                                                            "embedding (A1111 .pt/.safetensors, diffusers .bin); "
                                                            "the prompt calls it by the file's stem. Repeatable.")]
EmbeddingDir = Annotated[Optional[str], typer.Option("--embedding-dir", help="A folder of embeddings: every .pt, "
                                                     ".safetensors and .bin in it, each called by its stem.")]
NoPromptSyntax = Annotated[bool, typer.Option("--no-prompt-syntax", help="Take prompts literally: no (emphasis), "
                                              "[de-emphasis], (word:1.3) or BREAK.")]
Lora = Annotated[Optional[List[str]], typer.Option("--lora", metavar="FILE[:WEIGHT]", help="A LoRA merged into the "
                                                   "model (kohya/sd-scripts or diffusers/PEFT .safetensors, LoCon "
                                                   "included; weight 1 by default); repeatable.")]
LoraDir = Annotated[Optional[str], typer.Option("--lora-dir", metavar="DIR", help="Folder where <lora:NAME:WEIGHT> "
                                               "prompt tags find NAME.safetensors (A1111 syntax; subfolders "
                                               "searched).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet: the first step of a run pays the "
                                       "compilation (cached across runs in ~/.cache/ldmcli/inductor); on the CPU "
                                       "the weights are frozen into it unless a job uses a LoRA. Pays off over "
                                       "long batches of large models.")]



# name -> (type, default): the order of --help
SHARED: Dict[str, Tuple[Any, Any]] = {
    "ckpt": (Ckpt, None), "config": (Config, None), "steps": (Steps, None), "sampler": (Sampler, "ddim"),
    "scale": (Scale, None), "eta": (Eta, None), "karras": (Karras, False), "schedule": (Schedule, None), "seed": (Seed, 0),
    "n_samples": (NSamples, 1), "batch_size": (BatchSize, 4), "device": (Device, "auto"), "dtype": (Dtype, "auto"),
    "out": (Out, "outputs"), "ema": (Ema, None), "prediction": (Prediction, None),
    "from_file": (FromFile, None), "json": (Json, False), "quiet": (Quiet, False), "overwrite": (Overwrite, False),
    "noise_device": (NoiseDevice, None), "vocab": (Vocab, None), "compile": (Compile, False),
    "vae": (Vae, None),
    "lora": (Lora, None), "lora_dir": (LoraDir, None),
    "clip_skip": (ClipSkip, None), "embedding": (TextEmbedding, None), "embedding_dir": (EmbeddingDir, None),
    "no_prompt_syntax": (NoPromptSyntax, False),
}
# only for subcommands that can take a text model
TEXT_OPTIONS = ("prediction", "vocab", "clip_skip", "embedding", "embedding_dir", "no_prompt_syntax")


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


def steps_phrase(steps: int, schedule: str = "") -> str:
    """"35 steps", "1 trailing step": a step count and the schedule it runs on, when it is not the sampler's own."""
    return f"{steps} {schedule + ' ' if schedule else ''}step{'s' if steps != 1 else ''}"


ENSEMBLE_SIDE = 512      # √tasks.superres.ENSEMBLE_PIXELS (not imported: that module loads torch)


def defaults_epilog(task: str) -> str:
    """The defaults a user gets, shown under a command's --help: the embedded model's own (read from its file
    header), and the public families' reference defaults that apply with --ckpt."""
    from ldmcli.loading.registry import embedded_defaults, family_defaults
    d = embedded_defaults(task)
    own = ""
    if d:
        n = d["steps_unprompted"]
        # unprompted steps without a schedule of their own run on the model's (SamplerSettings.resolved)
        unprompted = f" ({steps_phrase(n, d['schedule_unprompted'] or d['schedule'])} without a prompt)" if n else ""
        eta = f", eta {d['eta']:g}" if d["eta"] else ""
        views = (f", the mean of {d['ensemble']} views (fewer above {ENSEMBLE_SIDE}x{ENSEMBLE_SIDE} px of output)"
                 if d["ensemble"] > 1 else "")
        detail = f", detail {d['detail']:g}" if task == "superres" and d["detail"] not in (None, 1) else ""
        own = (f"Without --ckpt: the embedded {task} model, {steps_phrase(d['steps'], d['schedule'])}{unprompted}, "
               f"guidance {d['guidance']:g}{eta}{views}{detail}, {d['size']}x{d['size']} px (trained at {d['size']} "
               f"px; see the README's 'Embedded defaults'). ")
    families = family_defaults(task)
    return own + (f"With --ckpt, the family's reference defaults: {families}." if families else "")
