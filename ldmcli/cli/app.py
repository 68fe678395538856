"""`ldm` — thin Typer front end. Parsing only: every subcommand hands a list of jobs to `ldmcli.cli.runner`.

Heavy imports (torch) happen inside the commands, so `ldm --help` stays fast.
Exit codes: 0 ok, 1 runtime failure, 2 bad input/usage, 3 some jobs of a batch failed, 130 interrupted (Ctrl-C),
141 stdout closed by its reader (the batch stops), 143 terminated (SIGTERM).
"""
from __future__ import annotations

from typing import List, Optional

import typer
from typing_extensions import Annotated

from ldmcli.cli.guard import OneLineErrors
from ldmcli.cli.options import (TEXT_OPTIONS, Ckpt, Device, Dtype, Eta, Height, Json, MatchInput, NegPrompt, Out,
                                Quiet, Scale, Seed, Steps, Width, defaults_epilog, shared_options)

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Latent Diffusion from the command line: txt2img, inpaint, superres, layout2img, "
                       "semantic2img, sample.\n\nExit codes: 0 ok, 1 runtime failure, 2 bad input, 3 partial batch "
                       "failure, 130 interrupted, 141 stdout closed, 143 terminated.")
weights_app = typer.Typer(no_args_is_help=True, help="List and verify known and embedded checkpoints.")
app.add_typer(weights_app, name="weights")

_STATE = {"debug": False}

def _run(task: str, positional: dict, opts: dict) -> None:
    from ldmcli.cli.runner import run_task
    from ldmcli.cli.guard import guarded
    code = guarded(lambda: run_task(task, positional, opts), debug=_STATE["debug"])
    raise typer.Exit(code)


def _print_version(value: bool) -> None:
    if value:                   # eager: runs while parsing, so `ldm --version` needs no command
        from ldmcli import __version__
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
          version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                                callback=_print_version)] = False):
    _STATE["debug"] = debug


@app.command(epilog=defaults_epilog("txt2img"))
@shared_options()
def txt2img(prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
            negative_prompt: NegPrompt = "", height: Height = None, width: Width = None, opts: dict = None):
    """Generate images from a text prompt."""
    _run("txt2img", {"prompt": prompt, "negative_prompt": negative_prompt, "height": height, "width": width}, opts)


@app.command(epilog=defaults_epilog("txt2img"))   # img2img runs a text-to-image model
@shared_options()
def img2img(image: Annotated[Optional[str], typer.Argument(help="Image to redraw (resized to --height x --width, "
                                                             "else floored to the model's multiple).")] = None,
            prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
            strength: Annotated[float, typer.Option("--strength", min=0, max=1, help="Denoising strength: the "
                                                    "fraction of the steps that run (0 = the image back, 1 = "
                                                    "nearly txt2img).")] = 0.75,
            negative_prompt: NegPrompt = "", height: Height = None, width: Width = None, opts: dict = None):
    """Redraw an image toward a text prompt (SDEdit: --strength of the schedule from the image)."""
    _run("img2img", {"image": image, "prompt": prompt or "", "negative_prompt": negative_prompt,
                     "strength": strength, "height": height, "width": width}, opts)


@app.command(epilog=defaults_epilog("inpaint"))
@shared_options()
def inpaint(image: Annotated[Optional[str], typer.Argument(help="Image to edit (any size; PNG/JPEG/...).")] = None,
            prompt: Annotated[Optional[str], typer.Argument(help="What to paint into the hole (text models).")] = None,
            mask: Annotated[Optional[str], typer.Option("--mask", help="Mask PNG: white = repaint.")] = None,
            mask_blur: Annotated[float, typer.Option("--mask-blur", min=0, help="Feather radius (pixels).")] = 0,
            invert_mask: Annotated[bool, typer.Option("--invert-mask", help="Repaint the black part.")] = False,
            match_input: MatchInput = None, negative_prompt: NegPrompt = "", opts: dict = None):
    """Repaint the masked part of an image; pixels outside the mask stay unchanged."""
    _run("inpaint", {"image": image, "mask": mask, "prompt": prompt or "", "negative_prompt": negative_prompt,
                     "mask_blur": mask_blur or None, "invert_mask": invert_mask or None,
                     "match_input": match_input}, opts)


@app.command(epilog=defaults_epilog("superres"))
@shared_options(exclude=("scale",), batch_size=1)
def superres(image: Annotated[Optional[str], typer.Argument(help="Low-resolution image.")] = None,
             prompt: Annotated[Optional[str], typer.Argument(help="Text guidance (SD x4 upscaler).")] = None,
             upscale: Annotated[int, typer.Option("--scale", help="Upscaling factor; must be the model's (4).")] = 4,
             guidance: Annotated[Optional[float], typer.Option("--guidance", help="CFG scale (text models).")] = None,
             noise_level: Annotated[Optional[int], typer.Option("--noise-level", help="x4 upscaler noise "
                                                                "augmentation level (default 20).")] = None,
             tile_size: Annotated[Optional[int], typer.Option("--tile-size", help="Latent tile size.")] = None,
             tile_overlap: Annotated[Optional[int], typer.Option("--tile-overlap", help="Latent tile "
                                                                 "overlap.")] = None,
             match_input: MatchInput = None,
             detail: Annotated[Optional[float], typer.Option("--detail", min=0, max=1, help="With --match-input: "
                                                             "the share of the model's detail over the "
                                                             "back-projected bicubic upscale (1 = all of it; "
                                                             "default: the model's).")] = None,
             ensemble: Annotated[Optional[int], typer.Option("--ensemble", min=1, max=8, help="Average this many "
                                                             "views of the input (flips and rotations, each with "
                                                             "its own noise): better PSNR for one pass per view; 1 = "
                                                             "one upscale (default: the model's).")] = None,
             negative_prompt: NegPrompt = "", opts: dict = None):
    """Upscale an image 4x (overlapping latent tiles for large inputs). --guidance sets CFG here, since --scale is
    the upscaling factor."""
    opts = dict(opts, scale=guidance)
    _run("superres", {"image": image, "prompt": prompt or "", "negative_prompt": negative_prompt,
                      "upscale": upscale, "noise_level": noise_level, "tile_size": tile_size,
                      "tile_overlap": tile_overlap, "match_input": match_input, "detail": detail,
                      "ensemble": ensemble}, opts)


@app.command(epilog=defaults_epilog("layout2img"))
@shared_options(exclude=TEXT_OPTIONS)
def layout2img(layout: Annotated[Optional[str], typer.Argument(help="Layout JSON: [{label, box: [x0,y0,x1,y1]}], "
                                                                "pixels or 0-1.")] = None,
               box: Annotated[Optional[List[str]], typer.Option("--box", help='"label x0 y0 x1 y1" (repeatable).')]
               = None,
               list_labels: Annotated[bool, typer.Option("--list-labels", help="Print the model's labels.")] = False,
               height: Height = None, width: Width = None, opts: dict = None):
    """Draw objects inside the given boxes."""
    if list_labels:
        _labels("layout2img", opts)
    _run("layout2img", {"layout": layout, "boxes": box or None, "height": height, "width": width}, opts)


@app.command(epilog=defaults_epilog("semantic2img"))
@shared_options(exclude=TEXT_OPTIONS, batch_size=2)
def semantic2img(segmap: Annotated[Optional[str], typer.Argument(help="Segmentation map: index PNG (mode L/P) or "
                                                                  "colour PNG with --palette.")] = None,
                 palette: Annotated[Optional[str], typer.Option("--palette", help="Colour -> label file (JSON "
                                                                "or 'id r g b' lines).")] = None,
                 list_labels: Annotated[bool, typer.Option("--list-labels", help="Print the class names.")] = False,
                 tile_size: Annotated[Optional[int], typer.Option("--tile-size", help="Latent tile size (default: "
                                                                  "one pass, or native tiles when it would not "
                                                                  "fit in memory).")] = None,
                 tile_overlap: Annotated[Optional[int], typer.Option("--tile-overlap", help="Latent tile "
                                                                     "overlap.")] = None, opts: dict = None):
    """Paint an image that follows a semantic segmentation map (any size: the model runs convolutionally)."""
    if list_labels:
        _labels("semantic2img", opts)
    _run("semantic2img", {"segmap": segmap, "palette": palette, "tile_size": tile_size,
                          "tile_overlap": tile_overlap}, opts)


def _sample_epilog() -> str:
    """`ldm sample` has no embedded model: the reference defaults of the class and unconditional families."""
    from ldmcli.loading.registry import family_defaults
    return f"The families' reference defaults: {family_defaults('class2img')}; {family_defaults('uncond')}."


@app.command(epilog=_sample_epilog())
@shared_options(exclude=TEXT_OPTIONS)
def sample(label: Annotated[Optional[str], typer.Option("--class", help="Class-conditional models: an ImageNet id "
                                                        "(0-999) or name (see --list-labels); 'unconditional' is "
                                                        "cin256-v2's null class. None for unconditional "
                                                        "models.")] = None,
           list_labels: Annotated[bool, typer.Option("--list-labels", help="Print the class names.")] = False,
           height: Height = None, width: Width = None, opts: dict = None):
    """Sample a class-conditional (ImageNet cin256, cin256-v2) or unconditional (CelebA-HQ, FFHQ, LSUN) model;
    --scale guides cin256-v2 against its null class."""
    if list_labels:
        _labels("sample", opts)
    _run("sample", {"class": label, "height": height, "width": width}, opts)


def _labels(task: str, opts: dict) -> None:
    from ldmcli.cli.commands import print_labels
    from ldmcli.cli.guard import guarded
    raise typer.Exit(guarded(lambda: print_labels(task, opts), debug=_STATE["debug"]))


@app.command()
def samplers():
    """List the samplers: name, A1111 label, default schedule, the schedules they take, --eta."""
    from ldmcli.sampling.table import table_rows
    rows = [("name", "A1111", "default schedule", "schedules", "eta"), *table_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@app.command()
def info(image: Annotated[str, typer.Argument(help="A PNG written by ldm (or by AUTOMATIC1111).")],
         json: Json = False):
    """Print the generation record stored in a PNG."""
    from ldmcli.cli.commands import show_info
    from ldmcli.cli.guard import guarded
    raise typer.Exit(guarded(lambda: show_info(image, json), debug=_STATE["debug"]))


@app.command()
def replay(image: Annotated[str, typer.Argument(help="A PNG written by ldm.")],
           ckpt: Ckpt = None, device: Device = "auto", dtype: Dtype = "auto", out: Out = "outputs",
           quiet: Quiet = False, json: Json = False):
    """Regenerate an image from the record in its metadata (same model, seed, settings)."""
    from ldmcli.cli.commands import replay_opts
    from ldmcli.cli.guard import guarded
    given = dict(locals())          # before the lambda: inside it, locals() would be the lambda's own (empty)
    holder = {}
    code = guarded(lambda: holder.update(replay_opts(image, given)), debug=_STATE["debug"])
    if code:
        raise typer.Exit(code)
    _run(holder["task"], holder["positional"], holder["opts"])


@app.command("eval")
def eval_(task: Annotated[Optional[List[str]], typer.Option("--task", help="all, or tasks (repeatable or comma "
                                                             "list): txt2img, inpaint, superres, layout2img, "
                                                             "semantic2img, autoencoder (the first stage's "
                                                             "reconstructions: the ceiling).")] = None,
          n: Annotated[int, typer.Option("--n", min=1, help="Eval examples per task (the targets are judged at "
                                         "150: fewer is a quick look).")] = 12,
          samples: Annotated[int, typer.Option("--samples", min=1, help="Images per example (seeds in one "
                                               "batch).")] = 4,
          ckpt: Annotated[Optional[List[str]], typer.Option("--ckpt", help="TASK=PATH (repeatable): evaluate this "
                                                            "checkpoint instead of the embedded default.")] = None,
          steps: Steps = None, scale: Scale = None, eta: Eta = None, seed: Seed = 0, device: Device = "auto",
          dtype: Dtype = "auto",
          detail: Annotated[Optional[float], typer.Option("--detail", min=0, max=1, help="superres's share of "
                                                          "the model's detail (default: the model's).")] = None,
          ensemble: Annotated[Optional[int], typer.Option("--ensemble", min=1, max=8, help="superres's views "
                                                          "averaged (default: the model's).")] = None,
          split: Annotated[str, typer.Option("--split", help="eval (the held-out split and photos the targets are "
                                             "for) or val (train-split scenes no training run draws, and other "
                                             "pictures than the eval photos: tune --steps, --scale, --eta, "
                                             "--detail, --ensemble there).")] = "eval",
          json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout instead of the "
                                             "table.")] = False,
          save: Annotated[Optional[str], typer.Option("--save", help="Write the generated images (and each "
                                                      "example's condition) under this folder.")] = None,
          check: Annotated[bool, typer.Option("--check", help="Exit 1 when any target is missed.")] = False,
          quiet: Quiet = False):
    """Score the default models on the shapes world's held-out eval split against its exact ground truth."""
    from ldmcli.cli.guard import guarded

    def work() -> int:
        import json as json_lib
        import time
        from contextlib import ExitStack
        import ldmcli.eval as E
        from ldmcli.cli.console import Console
        tasks = E.parse_tasks(task or ["all"])
        overrides = E.parse_overrides(ckpt or [], tasks)
        paths = {t: str(p) for t, p in E.resolve_checkpoints(tasks, overrides).items()}
        console, bars = Console(quiet=quiet), ExitStack()
        state = {}

        def progress(name: str, done: int, total: int) -> None:
            if done == 0:
                bars.close()
                state["advance"] = bars.enter_context(console.progress(total, f"eval {name}"))
            else:
                state["advance"]()
        start = time.perf_counter()
        with bars:
            results = E.evaluate(tasks, n, paths, device, seed, steps, save, progress, samples, split, scale, eta,
                                 detail, ensemble, dtype)
        if json:
            typer.echo(json_lib.dumps(E.json_report(results, ckpts=paths, n=n, samples=samples, seed=seed,
                                                    steps=steps, scale=scale, eta=eta, detail=detail, ensemble=ensemble,
                                                    split=split, dtype=dtype,
                                                    seconds=round(time.perf_counter() - start, 2))))
        else:
            typer.echo(E.format_table(results))
        return 1 if check and not E.all_passed(results) else 0
    raise typer.Exit(guarded(work, debug=_STATE["debug"]))


@weights_app.command("list")
def weights_list(json: Json = False):
    """Show the embedded defaults and known public checkpoints, and which are present."""
    from ldmcli.cli.commands import weights_list as run
    from ldmcli.cli.guard import guarded
    raise typer.Exit(guarded(lambda: run(json), debug=_STATE["debug"]))


@weights_app.command("verify")
def weights_verify(name: Annotated[Optional[str], typer.Argument(help="One registry name (default: all present).")]
                   = None):
    """Check the SHA-256 of present checkpoints against the registry."""
    from ldmcli.cli.commands import weights_verify as run
    from ldmcli.cli.guard import guarded
    raise typer.Exit(guarded(lambda: run(name), debug=_STATE["debug"]))


def _add_train() -> None:
    from ldmcli.train.cli import train_command
    app.command("train")(train_command)


_add_train()


def main() -> None:
    """The `ldm` entry point (the script and `python -m ldmcli`): the app, then the process ends as
    ldmcli/cli/process.py says. Call `app()` instead to get the SystemExit."""
    from ldmcli.cli.process import Process, end
    Process.is_ldm = True
    try:
        app()
    except SystemExit as e:
        end(e.code)
    end(0)
