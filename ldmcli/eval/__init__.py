"""`ldm eval`: sample the default models on the shapes world's held-out eval split and score the images against
the world's exact ground truth (the world and its read-back: `ldmcli.world`).

Per task, `n` eval examples, each sampled with `samples` seeds in one call of the task function of the task table
(its inputs from the example: `examples.INPUTS`), every image scored on its own (`scores.SCORERS`):

  txt2img       prompt = the example's caption; colour / shape / position / count accuracy of what the caption
                asks, over one-, two- and three-object scenes in equal numbers
  inpaint       hole = the box around one object, prompt = the caption; change outside the hole, PSNR inside it
                beside `diffusion_fill`, and whether that object is back in the hole
  superres      input = the exact render at a quarter of the model's size; PSNR / SSIM against the exact render
                at its size, beside PIL bicubic
  layout2img    the scene's boxes and "red circle" labels; IoU of the best-overlapping object read back, label
  semantic2img  the scene's class map; pixel accuracy and mIoU of the class map read back
  autoencoder   no sampling: the first stage's ceiling (`ceiling.py`)

The pass/fail targets are `report.TARGETS`; `report.check` applies them.

  examples.py   the eval scenes of a task, and the task function's inputs for one
  scores.py     each task's metrics over its images
  report.py     targets, check, the table and the JSON report
  ceiling.py    the first-stage ceiling
  run.py        tasks and checkpoints, sampling a task's examples, `evaluate`
"""
from ldmcli.eval.ceiling import CEILING, autoencoder_ceiling, first_stage_model
from ldmcli.eval.examples import DEFAULT_N, EVAL_SPLITS, check_split, eval_examples, task_inputs
from ldmcli.eval.report import (TARGET_N, TARGETS, Target, all_passed, check, format_table, json_report, rows,
                                target_text, threshold)
from ldmcli.eval.run import (SAMPLES, evaluate, evaluate_model, generate, parse_overrides, parse_tasks,
                             resolve_checkpoints)
from ldmcli.eval.scores import score
from ldmcli.tasks import TASK_NAMES

__all__ = ["CEILING", "DEFAULT_N", "EVAL_SPLITS", "SAMPLES", "TARGET_N", "TARGETS", "TASK_NAMES", "Target",
           "all_passed", "autoencoder_ceiling", "check", "check_split", "eval_examples", "evaluate",
           "evaluate_model", "first_stage_model", "format_table", "generate", "json_report", "parse_overrides",
           "parse_tasks", "resolve_checkpoints", "rows", "score", "target_text", "task_inputs", "threshold"]
