"""Fault injection through the real CLI: bad images, masks, checkpoints, job files, prompts, sizes and options, a
full disk, code hidden in a pickle, NaNs, and SIGINT in the middle of a batch.

Every case states its exit code and checks the scripting contract:
- a failure prints exactly ONE stderr line, `ldm: error: ...` (no traceback); a success prints nothing (-q);
- nothing partial or lost: the output directory holds only complete, readable PNGs (no temp files), as many as
  expected; a PNG there before (`keep.png`, or the target itself under --overwrite) is unchanged; nothing is
  written anywhere else.
Cases that must be refused before the model loads carry the `no_load` patch (loading fails the test).
`CASE_IDS` names every case (the table's and the SIGINT one) and `GROUPS` its class: checkpoints,
images/masks/maps, layouts/palettes, job files, faults/signals/pipes, numeric options. A run ends with a summary
per class and in total: tried, clean one-line errors with the right code, tracebacks, partial or temp files left,
writes outside the output folder, finished outputs lost.

Decision recorded here: an empty or blank prompt is refused for txt2img (exit 2), not taken as "unconditional":
in a pipeline it is nearly always an unset variable or an empty column, and 1000 unconditional images are an
expensive way to find out. Inpainting keeps an empty prompt (the text is optional there).
"""
from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from fault_inputs import (FIRST_RUN, Ctx, colour_map, deep_yaml, disk_full, env, evil_ckpt, fifo, header_config, nan_unet,
                          big_machine, no_load, no_marker, no_tensors, png_bytes, png_header_only, replayable, small_machine,
                          unet_only, zip_ckpt)
from test_fuzz import tiff

RESULTS: dict = {}   # case id -> the figures of `_seen`, and "clean": a clean result with the right code
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
FIGURES = ("clean", "traceback", "partial", "outside", "lost")


def summary_lines() -> list:
    """One line per class and one in total: tried, clean (one line, right code), and the four counts that
    must be 0."""
    lines = []
    for group in ("checkpoints", "images/masks/maps", "layouts/palettes", "job files", "faults/signals/pipes",
                  "numeric options", None):
        rows = [r for case, r in RESULTS.items() if group is None or GROUPS[case] == group]
        cases = [c for c in CASE_IDS if group is None or GROUPS[c] == group]
        sums = [sum(r[k] for r in rows) for k in FIGURES]
        lines.append("{:<21} {} of {} tried, {} clean one-line errors or successes with the right code, {} "
                     "tracebacks, {} partial or temp files, {} writes outside the output folder, {} finished outputs "
                     "lost".format(group or "total", len(rows), len(cases), *sums))
    return lines


@pytest.fixture(autouse=True, scope="module")
def one_thread_and_summary(request, one_thread):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\nfault suite:\n" + "\n".join(summary_lines()))


@pytest.fixture
def ctx(tmp_path, sd1_file):
    c = Ctx(tmp_path, tmp_path / "in", tmp_path / "out", sd1_file, png_bytes())
    c.inp.mkdir()
    c.out.mkdir()
    (c.out / "keep.png").write_bytes(c.keep)
    return c


# --- the table ------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list]
    code: int
    message: str = ""                              # substring of the one error line (exit != 0)
    pngs: int = 0                                  # new complete PNGs expected in out/
    patch: Optional[Callable] = None               # (ctx, monkeypatch) -> None, applied before the run
    check: Optional[Callable[[Ctx], None]] = None  # extra assertion after the run
    stdin: Optional[str] = None
    target: Optional[str] = None                   # a file in out/ that the run (with --overwrite) must not destroy
                                                   # (FIRST_RUN: the file a fault-free run of the case writes)


def _jsonl(*objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


CASES = [
    # images (inpaint with the tiny txt2img model: latent blending)
    Case("image-corrupt-png", lambda c: c.inpaint(c.file("x.png", b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(300)),
                                                  c.mask()), 2, "image "),
    Case("image-truncated-png", lambda c: c.inpaint(c.file("x.png", png_bytes()[:300]), c.mask()), 2, "truncated"),
    Case("image-empty-file", lambda c: c.inpaint(c.file("x.png", b""), c.mask()), 2, "not an image file"),
    Case("image-text-named-png", lambda c: c.inpaint(c.file("x.png", b"hello\n"), c.mask()), 2, "not an image"),
    Case("image-is-directory", lambda c: c.inpaint(c.inp, c.mask()), 2, "is a directory"),
    Case("image-missing", lambda c: c.inpaint(c.inp / "nope.png", c.mask()), 2, "no such file"),
    Case("image-bomb-header", lambda c: c.inpaint(c.file("x.png", png_header_only(100000, 100000)), c.mask()), 2,
         "100000x100000 pixels"),
    Case("image-mode-lab-tiff", lambda c: c.inpaint(c.image("x.tif", "LAB", fmt="TIFF"), c.mask()), 0, pngs=1),
    Case("image-tiff-bad-samples-per-pixel", lambda c: c.inpaint(c.file("x.tif", tiff(bomb=False)), c.mask()), 2,
         "not an image file"),
    Case("image-tiff-bomb-bad-tag", lambda c: c.inpaint(c.file("x.tif", tiff(bomb=True)), c.mask()), 2, "65535x65535"),
    Case("image-mode-cmyk-jpeg", lambda c: c.inpaint(c.image("x.jpg", "CMYK"), c.mask()), 0, pngs=1),
    Case("image-mode-16bit-grey", lambda c: c.inpaint(c.image("x.png", "I;16"), c.mask()), 0, pngs=1),
    Case("image-mode-float-tiff", lambda c: c.inpaint(c.image("x.tif", "F", fmt="TIFF"), c.mask()), 0, pngs=1),
    Case("image-mode-la", lambda c: c.inpaint(c.image("x.png", "LA"), c.mask()), 0, pngs=1),
    Case("image-mode-1bit", lambda c: c.inpaint(c.image("x.png", "1"), c.mask()), 0, pngs=1),
    Case("image-mode-palette-alpha", lambda c: c.inpaint(c.image("x.png", "P", transparency=0), c.mask()), 0, pngs=1),
    Case("image-odd-size-17x13", lambda c: c.inpaint(c.image(size=(17, 13)), c.mask(size=(17, 13))), 0, pngs=1),
    # masks
    Case("mask-wrong-aspect", lambda c: c.inpaint(c.image(), c.mask(size=(16, 8))), 2, "does not fit",
         patch=no_load),
    Case("mask-same-aspect-other-size", lambda c: c.inpaint(c.image(), c.mask(size=(32, 32))), 0, pngs=1),
    Case("mask-rgba", lambda c: c.inpaint(c.image(), c.mask(mode="RGBA")), 0, pngs=1),
    Case("mask-truncated", lambda c: c.inpaint(c.image(), c.file("m.png", png_bytes()[:200])), 2, "mask "),
    Case("mask-not-given", lambda c: c.inpaint(c.image(), None), 2, "needs a mask"),
    # checkpoints
    Case("ckpt-random-bytes", lambda c: c.t2i("--ckpt", c.file("m.ckpt", random.Random(7).randbytes(4096))), 2,
         "not a torch zip checkpoint"),
    Case("ckpt-empty-file", lambda c: c.t2i("--ckpt", c.file("m.safetensors", b"")), 2, "checkpoint is empty"),
    Case("ckpt-missing", lambda c: c.t2i("--ckpt", c.inp / "nope.safetensors"), 2, "checkpoint not found"),
    Case("ckpt-directory", lambda c: c.t2i("--ckpt", c.inp), 2, "is a directory"),
    Case("ckpt-truncated-safetensors",
         lambda c: c.t2i("--ckpt", c.file("cut.safetensors", c.ckpt.read_bytes()[:5000])), 2, "truncated or corrupt"),
    Case("ckpt-safetensors-huge-header",
         lambda c: c.t2i("--ckpt", c.file("h.safetensors", struct.pack("<Q", 2**62) + b"{}")), 2, "safetensors"),
    Case("ckpt-truncated-zip-ckpt", lambda c: c.t2i("--ckpt", zip_ckpt(c, 0.6)), 2, "model.ckpt"),
    Case("ckpt-unet-only", lambda c: c.t2i("--ckpt", unet_only(c)), 2, "UNet-only"),
    Case("ckpt-pickle-runs-code", lambda c: c.t2i("--ckpt", evil_ckpt(c, True)), 2, "refusing", check=no_marker),
    Case("ckpt-legacy-pickle-runs-code", lambda c: c.t2i("--ckpt", evil_ckpt(c, False)), 2,
         "not a torch zip checkpoint", check=no_marker),
    # job files
    Case("jobs-jsonl-bad-json", lambda c: c.jobs('{"prompt": "a"}\n{"prompt": "b"\n'), 2, "jobs.txt:2: invalid JSON"),
    Case("jobs-jsonl-not-object", lambda c: c.jobs('{"prompt": "a"}\n[1, 2]\n'), 2, "expected a JSON object"),
    Case("jobs-jsonl-wrong-type", lambda c: c.jobs(_jsonl({"prompt": "a", "steps": "ten"})), 2, "should be an integer"),
    Case("jobs-jsonl-unknown-key", lambda c: c.jobs(_jsonl({"prompt": "a", "seeed": 1})), 2, "did you mean 'seed'"),
    Case("jobs-jsonl-huge-seed", lambda c: c.jobs(_jsonl({"prompt": "a", "seed": 10**30})), 2, "'seed' must be <"),
    Case("jobs-jsonl-nan", lambda c: c.jobs('{"prompt": "a", "scale": NaN}\n'), 2, "must be finite"),
    Case("jobs-jsonl-nul-in-prompt", lambda c: c.jobs(_jsonl({"prompt": "a\u0000b"})), 2, "NUL"),
    Case("jobs-jsonl-lone-surrogate", lambda c: c.jobs('{"prompt": "a\\ud800"}\n'), 2, "not valid Unicode"),
    Case("jobs-jsonl-deep-nesting", lambda c: c.jobs('{"extra": ' + "[" * 10**5 + "]" * 10**5 + "}"), 2, "JSON"),
    Case("jobs-jsonl-zero-samples", lambda c: c.jobs(_jsonl({"prompt": "a", "n_samples": 0})), 2, "must be >= 1"),
    Case("jobs-binary", lambda c: c.jobs(b"a prompt\n\x00\x01\x02"), 2, "NUL byte"),
    Case("jobs-not-utf8", lambda c: c.jobs(b"caf\xe9\n"), 2, "not UTF-8"),
    Case("jobs-only-comments", lambda c: c.jobs("# nothing\n\n"), 2, "no jobs"),
    Case("jobs-stdin-empty", lambda c: ["txt2img"] + c.t2i("--from-file", "-")[2:], 2, "no jobs", stdin=""),
    Case("jobs-file-name-with-newline", lambda c: c.jobs("{bad\n", name="two\nlines.txt"), 2, "invalid JSON"),
    Case("jobs-missing-file", lambda c: ["txt2img", "--from-file", c.inp / "nope.txt", "--ckpt", c.ckpt,
                                         "-o", c.out], 2, "No such file"),
    Case("jobs-and-prompt-both", lambda c: c.jobs("a\n", "a prompt"), 2, "pass either --from-file or a prompt"),
    Case("jobs-one-bad-of-two", lambda c: c.jobs(_jsonl({"prompt": "a"}, {"prompt": "b", "steps": 5000})), 3,
         "job 2: --steps must be between", pngs=1),
    Case("jobs-name-path-traversal", lambda c: c.jobs(_jsonl({"prompt": "a", "name": "../../escape"})), 0, pngs=1),
    Case("jobs-huge-height", lambda c: c.jobs(_jsonl({"prompt": "a", "height": 10**6})), 2, "px limit",
         patch=no_load),
    # prompts
    Case("prompt-empty", lambda c: ["txt2img", "", "--ckpt", c.ckpt, "-o", c.out], 2, "txt2img needs a prompt"),
    Case("prompt-blank", lambda c: ["txt2img", "  \t ", "--ckpt", c.ckpt, "-o", c.out], 2, "needs a prompt"),
    Case("prompt-missing", lambda c: ["txt2img", "--ckpt", c.ckpt, "-o", c.out], 2, "needs a prompt"),
    Case("prompt-jsonl-empty", lambda c: c.jobs(_jsonl({"prompt": ""})), 2, "job 1: txt2img needs a prompt"),
    Case("prompt-20k-chars-unicode", lambda c: c.t2i()[:1] + ["ümlaut 🙂 مرحبا " * 1300] + c.t2i()[2:], 0, pngs=1),
    Case("inpaint-empty-prompt-allowed", lambda c: ["inpaint", c.image(), "", "--mask", c.mask(), "--ckpt", c.ckpt,
                                                    "--steps", 2, "-o", c.out], 0, pngs=1),
    # sizes
    Case("size-huge-16384", lambda c: c.t2i("-H", 16384, "-W", 16384), 2, "needs about", patch=small_machine),
    Case("size-over-cap", lambda c: c.t2i("-H", 32768), 2, "--height 32768 is over the 16384 px limit",
         patch=no_load),
    Case("size-not-multiple", lambda c: c.t2i("-W", 18), 2, "--width must be a positive multiple of 4"),
    Case("size-zero", lambda c: c.t2i("-H", 0), 2, "--height must be positive, got 0"),
    Case("size-negative", lambda c: c.t2i("-H", -16), 2, "--height must be positive, got -16"),
    # outputs
    Case("disk-full", lambda c: c.t2i(), 1, "no space left on device", patch=disk_full()),
    Case("disk-full-over-existing", lambda c: c.t2i("--overwrite"), 1, "no space left on device",
         patch=disk_full(), target=FIRST_RUN),
    Case("disk-full-at-second-image", lambda c: c.t2i("-n", 2, "--batch-size", 1), 1, "no space left", pngs=1,
         patch=disk_full(after_images=1)),
    Case("output-under-a-file", lambda c: c.t2i("-o", c.out / "keep.png" / "sub"), 1, "cannot write"),
    Case("output-exists-not-dir", lambda c: c.t2i("-o", c.file("plain", b"x")), 2, "is not a directory"),
    Case("stdout-several-images", lambda c: c.t2i("-n", 2, "-o", "-"), 2, "writes one PNG"),
    # options
    Case("bad-sampler", lambda c: c.t2i("--sampler", "magic"), 2, "unknown sampler 'magic'"),
    Case("steps-zero", lambda c: c.t2i("--steps", 0), 2, "--steps must be at least 1", patch=no_load),
    Case("bad-dtype", lambda c: c.t2i("--dtype", "float8"), 2, "unknown --dtype"),
    Case("fp16-on-cpu", lambda c: c.t2i("--dtype", "float16", "--device", "cpu"), 2, "not supported on CPU"),
    Case("bad-device", lambda c: c.t2i("--device", "quantum"), 2, "unknown --device"),
    Case("bad-noise-device", lambda c: c.t2i("--noise-device", "gpu"), 2, "--noise-device must be auto or cpu"),
    # numerics: a NaN-producing UNet must not leave a black or garbage PNG behind
    Case("nan-latents", lambda c: c.t2i(), 1, "NaN/Inf", patch=nan_unet),
]
BIG = "1" * 5000     # a 5,000-digit number: int() refuses more than 4,300 digits with a ValueError
CASES += [
    # checkpoints and configs that are not what they say
    Case("ckpt-dev-zero", lambda c: c.t2i("--ckpt", "/dev/zero"), 2, "is a device", patch=no_load),
    Case("ckpt-fifo", lambda c: c.t2i("--ckpt", fifo(c, "m.ckpt")), 2, "is a FIFO", patch=no_load),
    Case("ckpt-header-config-not-json", lambda c: c.t2i("--ckpt", header_config(c, "{nope")), 2, "is not JSON"),
    Case("ckpt-header-config-not-object", lambda c: c.t2i("--ckpt", header_config(c, "[1, 2]")), 2,
         "a list, not an object"),
    Case("ckpt-header-config-wrong-type", lambda c: c.t2i("--ckpt", header_config(c, {"channel_mult": "wide"})),
         2, "unet.channel_mult"),
    Case("ckpt-header-config-negative", lambda c: c.t2i("--ckpt", header_config(c, {"model_channels": -8})), 2,
         "unet.model_channels"),
    Case("ckpt-header-config-zero-heads", lambda c: c.t2i("--ckpt", header_config(c, {"num_heads": 0})), 2,
         "does not describe a buildable model"),
    Case("ckpt-no-tensors", lambda c: c.t2i("--ckpt", no_tensors(c)), 2, "holds no tensors"),
    Case("config-yaml-nested-deep", lambda c: c.t2i("--config", deep_yaml(c)), 2, "config"),
    Case("config-fifo", lambda c: c.t2i("--config", fifo(c, "c.yaml")), 2, "is a FIFO", patch=no_load),
    # images, masks and maps refused from their headers, before the model loads
    Case("mask-wrong-aspect-large", lambda c: c.inpaint(c.image(size=(64, 64)), c.mask(size=(64, 16))), 2,
         "another aspect ratio", patch=no_load),
    Case("segmap-bomb-header", lambda c: ["semantic2img", c.file("s.png", png_header_only(90000, 90000)),
                                          "-o", c.out], 2, "90000x90000 pixels", patch=no_load),
    Case("image-bomb-header-early", lambda c: c.inpaint(c.file("x.png", png_header_only(100000, 100000)),
                                                        c.mask()), 2, "100000x100000", patch=no_load),
    # layouts and palettes
    Case("layout-5000-digit-label", lambda c: ["layout2img", "--box", f"{BIG} 0 0 1 1", "-o", c.out], 2,
         "is out of range", patch=no_load),
    Case("layout-empty-box", lambda c: ["layout2img", "--box", "cat 0.5 0.5 0.2 0.9", "-o", c.out], 2, "is empty",
         patch=no_load),
    Case("layout-bad-json", lambda c: ["layout2img", c.file("l.json", b"[{"), "-o", c.out], 2, "invalid JSON",
         patch=no_load),
    Case("layout-negative-box", lambda c: ["layout2img", "--box", "1 -5 0 10 10", "-o", c.out], 2,
         "negative coordinate", patch=no_load),
    Case("layout-batch-big-label-then-good",
         lambda c: ["layout2img", "--from-file", c.file("j.jsonl", _jsonl({"extra": {"boxes": [f"{BIG} 0 0 1 1"]}},
                                                                          {"extra": {"boxes": ["1 0 0 1 1"]}}).encode()),
                    "--steps", 2, "-o", c.out], 3, "job 1:", pngs=1),
    Case("palette-bad-colour", lambda c: ["semantic2img", colour_map(c), "--palette", c.file("p.txt", b"1 300 0 0"),
                                          "-o", c.out], 2, "integers 0-255", patch=no_load),
    Case("palette-5000-digit-label", lambda c: ["semantic2img", colour_map(c), "--palette",
                                                c.file("p.txt", f"{BIG} 10 20 30".encode()), "-o", c.out], 2,
         "out of range"),
    Case("palette-empty", lambda c: ["semantic2img", colour_map(c), "--palette", c.file("p.txt", b"# none\n"),
                                     "-o", c.out], 2, "empty palette", patch=no_load),
    # job files and replay records
    Case("jobs-n-samples-billion", lambda c: c.jobs(_jsonl({"prompt": "a", "n_samples": 10**9})), 2,
         "at most 10000 images per job", patch=no_load),
    Case("replay-missing-steps", lambda c: ["replay", replayable(c, steps=None), "-o", c.out], 2, "lacks 'steps'",
         patch=no_load),
    Case("replay-seed-a-string", lambda c: ["replay", replayable(c, seed="x"), "-o", c.out], 2, "'seed'",
         patch=no_load),
    Case("replay-record-a-list", lambda c: ["replay", replayable(c, task=["txt2img"]), "-o", c.out], 2, "'task'",
         patch=no_load),
    Case("replay-unknown-task", lambda c: ["replay", replayable(c, task="img2video"), "-o", c.out], 2,
         "names the task", patch=no_load),
    Case("replay-eta-out-of-range", lambda c: ["replay", replayable(c, eta=2.5), "-o", c.out], 2,
         "--eta must be between 0 and 1", patch=no_load),
    # numeric options and the environment
    Case("scale-nan", lambda c: c.t2i("--scale", "nan"), 2, "--scale must be a finite number", patch=no_load),
    Case("scale-inf", lambda c: c.t2i("--scale", "inf"), 2, "--scale must be a finite number", patch=no_load),
    Case("eta-two", lambda c: c.t2i("--eta", "2"), 2, "--eta must be between 0 and 1, got 2", patch=no_load),
    Case("eta-negative", lambda c: c.t2i("--eta", "-0.5"), 2, "--eta must be between 0 and 1", patch=no_load),
    Case("n-samples-huge", lambda c: c.t2i("-n", 10**6), 2, "--n-samples must be between 1 and 10000",
         patch=no_load),
    Case("batch-size-huge", lambda c: c.t2i("--batch-size", 10**5), 2, "--batch-size must be between 1 and 1000",
         patch=no_load),
    Case("seed-negative", lambda c: c.t2i("--seed", -7), 2, "--seed must be between 0 and", patch=no_load),
    Case("mask-blur-nan", lambda c: c.inpaint(c.image(), c.mask(), "--mask-blur", "nan"), 2, "--mask-blur",
         patch=no_load),
    Case("noise-level-negative", lambda c: ["superres", c.image(), "--noise-level", -1, "-o", c.out], 2,
         "--noise-level must be between 0 and 999", patch=no_load),
    Case("tile-size-zero", lambda c: ["semantic2img", c.image(mode="L"), "--tile-size", 0, "-o", c.out], 2,
         "--tile-size must be between 1", patch=no_load),
    Case("tile-overlap-too-big", lambda c: ["semantic2img", c.image(mode="L"), "--tile-size", 8, "--tile-overlap", 8,
                                            "-o", c.out], 2, "--tile-overlap must be below", patch=no_load),
    Case("env-world-size-junk", lambda c: c.t2i(), 2, "WORLD_SIZE='two' is not a whole number",
         patch=env(WORLD_SIZE="two")),
    Case("env-rank-not-below-world", lambda c: c.t2i(), 2, "RANK=2 must be below WORLD_SIZE=2",
         patch=env(WORLD_SIZE="2", RANK="2")),
    Case("env-local-rank-junk", lambda c: c.t2i(), 2, "LOCAL_RANK='-1' is not a whole number",
         patch=env(LOCAL_RANK="-1")),
    Case("size-attention-too-slow-on-cpu", lambda c: c.t2i("-H", 4096, "-W", 4096), 2, "self-attention alone",
         patch=big_machine),
]
if not torch.cuda.is_available():
    CASES.append(Case("cuda-unavailable", lambda c: c.t2i("--device", "cuda"), 2, "no CUDA device"))

CASE_IDS = [c.id for c in CASES] + ["sigint-mid-batch"]
assert len(set(CASE_IDS)) == len(CASE_IDS)
_CLASSES = (("ckpt-", "checkpoints"), ("config-", "checkpoints"), ("image-", "images/masks/maps"),
            ("mask-", "images/masks/maps"), ("segmap-", "images/masks/maps"), ("layout-", "layouts/palettes"),
            ("palette-", "layouts/palettes"), ("jobs-", "job files"), ("prompt-", "job files"),
            ("inpaint-", "job files"), ("replay-", "job files"), ("disk-", "faults/signals/pipes"),
            ("output-", "faults/signals/pipes"), ("stdout-", "faults/signals/pipes"),
            ("sigint-", "faults/signals/pipes"), ("nan-", "faults/signals/pipes"))
GROUPS = {c: next((g for prefix, g in _CLASSES if c.startswith(prefix)), "numeric options") for c in CASE_IDS}


# --- the contract checks ----------------------------------------------------------------------------------------
def _listing(ctx: Ctx, target: Optional[tuple] = None) -> dict:
    """Partial files (temp, hidden, unreadable PNGs in out/), files written outside in/ and out/, lost files
    (keep.png or the --overwrite target changed) and the new complete PNGs."""
    partial, pngs = [], []
    for p in sorted(q for q in ctx.out.rglob("*") if q.is_file()):
        if p.name.startswith(".") or ".tmp" in p.name:
            partial.append(p.name)
        elif p.suffix == ".png":
            try:
                with Image.open(p) as img:
                    img.load()
                pngs.append(p)
            except Exception:  # noqa: BLE001 - any failure to read back is a partial file
                partial.append(p.name)
    lost = int(not (ctx.out / "keep.png").exists() or (ctx.out / "keep.png").read_bytes() != ctx.keep)
    if target is not None:
        lost += int((ctx.out / target[0]).read_bytes() != target[1])
    outside = sorted(p.name for p in ctx.tmp.iterdir() if p.name not in ("in", "out", "PWNED"))
    new = [p for p in pngs if p.name != "keep.png" and (target is None or p.name != target[0])]
    return {"partial": partial, "outside": outside, "lost": lost, "new_pngs": new}


def _clean(code: int, want: int, stderr: str) -> bool:
    """The right exit code, and nothing on stderr (success) or exactly one `ldm: error:` line."""
    lines = stderr.splitlines()
    return code == want and (lines == [] if want == 0 else len(lines) == 1 and lines[0].startswith("ldm: error: "))


def _seen(case_id: str, ctx: Ctx, clean: bool, traceback: bool, target: Optional[tuple] = None) -> dict:
    seen = _listing(ctx, target)
    RESULTS[case_id] = {"clean": int(clean), "traceback": int(traceback), "partial": len(seen["partial"]),
                        "outside": len(seen["outside"]), "lost": seen["lost"]}
    return seen


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, ctx, monkeypatch):
    target = None
    argv = [str(a) for a in case.argv(ctx)] + ["-q"]
    if case.target:
        name = case.target
        if name == FIRST_RUN:       # the file names carry the job's fingerprint: let a clean run name it
            first = CliRunner().invoke(app, argv)
            assert first.exit_code == 0, first.stderr
            name = Path(first.stdout.split()[0]).name
        target = (name, png_bytes(seed=1, side=8))   # an older result the run must not destroy
        (ctx.out / name).write_bytes(target[1])
    if case.patch:
        case.patch(ctx, monkeypatch)
    r = CliRunner().invoke(app, argv, input=case.stdin)
    monkeypatch.undo()
    escaped = r.exception is not None and not isinstance(r.exception, SystemExit)
    seen = _seen(case.id, ctx, _clean(r.exit_code, case.code, r.stderr), escaped or "Traceback" in r.stderr,
                 target)
    assert not escaped, repr(r.exception)
    assert r.exit_code == case.code, r.stderr
    if case.code == 0:
        assert r.stderr == "" and len(r.stdout.split()) == case.pngs
    else:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ldm: error: "), f"not one error line: {r.stderr!r}"
        assert case.message in lines[0], lines[0]
    assert seen["partial"] == [] and seen["outside"] == [] and seen["lost"] == 0, seen
    assert len(seen["new_pngs"]) == case.pngs, seen
    if case.check:
        case.check(ctx)


# --- a real process and a real signal ---------------------------------------------------------------------------
def _default_sigint() -> None:
    """A shell starts background jobs (`make test &`, a CI runner's `cmd &`) with SIGINT ignored, and Python keeps an
    ignored SIGINT ignored, as it should; this test is about Ctrl-C reaching ldm, so the child gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_mid_batch(ctx):
    jobs = ctx.file("jobs.txt", "".join(f"prompt number {i}\n" for i in range(200)).encode())
    proc = subprocess.Popen([sys.executable, "-m", "ldmcli", "txt2img", "--from-file", str(jobs), "--ckpt",
                             str(ctx.ckpt), "--steps", "20", "-H", "24", "-W", "24", "-o", str(ctx.out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV,
                            preexec_fn=_default_sigint)
    try:
        first = proc.stdout.readline()                       # the first finished image's path
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen = _seen("sigint-mid-batch", ctx, proc.returncode == 130 and err.splitlines() == ["ldm: error: interrupted"],
                 "Traceback" in err)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["ldm: error: interrupted"], err
    assert 1 <= len(seen["new_pngs"]) < 200                   # interrupted mid-batch, after the first image
    assert set([first.strip()] + rest.split()) <= {str(p) for p in seen["new_pngs"]}   # printed = complete
    assert seen["partial"] == [] and seen["outside"] == [] and seen["lost"] == 0, seen
