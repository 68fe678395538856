"""`ldm train`: parsing only; `ldmcli.train.run.train` does the work. ldmcli/cli/app.py registers it as the
`train` subcommand.

Multi-GPU: `torchrun --nproc_per_node N -m ldmcli train ...` (one process per GPU; --batch-size is per process).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import typer
from typing_extensions import Annotated

from ldmcli.train.recipes import TASKS

TASK_CHOICES = ", ".join(("all",) + TASKS)


def train_command(
        task: Annotated[str, typer.Option("--task", help=f"What to train: {TASK_CHOICES}. The autoencoder comes "
                                          "first, then the decoder fine-tune (encoder frozen); the LDM stages "
                                          "need their output in --out.")] = "all",
        recipe: Annotated[str, typer.Option("--recipe", help="cpu (32 px, about 4 hours on two cores) or gpu (64 px, "
                                            "hours on one GPU).")] = "cpu",
        data: Annotated[str, typer.Option("--data", help="world (the procedural shapes world) or a folder of "
                                          "images with <name>.txt captions beside them.")] = "world",
        out: Annotated[str, typer.Option("--out", "-o", help="Run directory: training states, the autoencoder, "
                                         "the exported <task>.safetensors and train.jsonl.")] = "runs/default",
        steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps per stage "
                                                     "(default: the recipe's).")] = None,
        batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Examples per step and "
                                                          "process (default: the recipe's).")] = None,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default: the "
                                                    "recipe's).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the data, the initial weights and every "
                                          "random draw.")] = 0,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the states in --out (finished "
                                             "stages are only re-exported).")] = False,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (under torchrun: "
                                            "cuda:LOCAL_RANK).")] = "auto",
        log: Annotated[Optional[str], typer.Option("--log", help="JSONL metrics log (default: "
                                                   "<out>/train.jsonl).")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or log lines on stderr.")] = False):
    """Train the small default models from scratch (shapes world or your captioned images) and export them."""
    from ldmcli.cli.console import Console
    from ldmcli.cli.guard import guarded
    from ldmcli.loading.compiling import use_cache_dir
    from ldmcli.train.run import TrainOptions, train

    # the optimizer's step makes Inductor's cache folder: in ldm's own compile cache (as --compile uses) rather than
    # an empty torchinductor_<user> left in the temp folder
    use_cache_dir()
    main = int(os.environ.get("RANK", "0")) == 0          # under torchrun only rank 0 talks
    # DDP notes that the gradient of a 1x1 conv has other (equivalent) strides than its bucket: harmless noise
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    console = Console(quiet=quiet or not main)
    opts = TrainOptions(task=task, recipe=recipe, data=data, out=out, steps=steps, batch_size=batch_size, lr=lr,
                        seed=seed, resume=resume, device=device, log=log)

    def work() -> None:
        for path in train(opts, console).values():
            if main:
                typer.echo(str(path))   # stdout: the written files, one a line (scripts read them)

    raise typer.Exit(guarded(work))


__all__ = ["train_command"]
