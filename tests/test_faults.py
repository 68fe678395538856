"""Fault injection through the real CLI: bad images, masks, checkpoints, job files, prompts, sizes and options, a
full disk, code hidden in a pickle, NaNs, and SIGINT in the middle of a batch.

Every case states its exit code and checks the scripting contract:
- a failure prints exactly ONE stderr line, `ldm: error: ...` (no traceback); a success prints nothing (-q);
- nothing partial or lost: the output directory holds only complete, readable PNGs (no temp files), as many as
  expected; a PNG there before (`keep.png`, or the target itself under --overwrite) is unchanged; nothing is
  written anywhere else.
`CASE_IDS` names every case (the table's and the SIGINT one): count them without running anything with
`python -c "import sys; sys.path[:0] = ['tests']; import test_faults as t; print(len(t.CASE_IDS))"`. A run ends
with a summary line: cases tried / passed / partial files / files lost.

Decision recorded here: an empty or blank prompt is refused for txt2img (exit 2), not taken as "unconditional":
in a pipeline it is nearly always an unset variable or an empty column, and 1000 unconditional images are an
expensive way to find out. Inpainting keeps an empty prompt (the text is optional there).
"""
from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ldmcli.sampling.memory as memory
from ldmcli.loading.checkpoint import save_safetensors
from ldmcli.cli.app import app
from test_fuzz import tiff
from tiny import SD1_TINY, compvis_state_dict, tiny_model

RESULTS: dict = {}   # case id -> {"passed": bool, "partial": int, "lost": int}
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))


@pytest.fixture(autouse=True, scope="module")
def one_thread_and_summary(request, one_thread):
    yield
    totals = [len(RESULTS)] + [sum(r[k] for r in RESULTS.values()) for k in ("passed", "partial", "lost")]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\nfault suite: {} of {} cases tried, {} passed, {} partial files, {} files lost"
                                .format(totals[0], len(CASE_IDS), *totals[1:]))


@pytest.fixture
def ctx(tmp_path, sd1_file):
    c = Ctx(tmp_path, tmp_path / "in", tmp_path / "out", sd1_file, png_bytes())
    c.inp.mkdir()
    c.out.mkdir()
    (c.out / "keep.png").write_bytes(c.keep)
    return c


# --- inputs ---------------------------------------------------------------------------------------------------------
def png_bytes(seed: int = 0, side: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


FIRST_RUN = "<first run>"


@dataclass
class Ctx:
    tmp: Path
    inp: Path      # inputs are made here
    out: Path      # outputs go here (holds keep.png beforehand)
    ckpt: Path
    keep: bytes    # keep.png's bytes

    def file(self, name: str, data: bytes) -> Path:
        (self.inp / name).write_bytes(data)
        return self.inp / name

    def image(self, name: str = "img.png", mode: str = "RGB", size=(16, 16), fmt=None, **kw) -> Path:
        rng, shape = np.random.default_rng(len(name)), (size[1], size[0])
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16))
        elif mode == "F":
            img = Image.fromarray(rng.random(shape, dtype=np.float32) * 255)
        else:
            img = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).convert(mode)
        img.save(self.inp / name, format=fmt, **kw)
        return self.inp / name

    def mask(self, name: str = "mask.png", size=(16, 16), mode: str = "L") -> Path:
        m = np.zeros((size[1], size[0]), np.uint8)
        m[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 255
        Image.fromarray(m).convert(mode).save(self.inp / name)
        return self.inp / name

    def t2i(self, *more) -> list:
        return ["txt2img", "a red circle", "--ckpt", self.ckpt, "--steps", 2, "-o", self.out, *more]

    def jobs(self, text, *more, name: str = "jobs.txt") -> list:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return ["txt2img", "--from-file", self.file(name, data), "--ckpt", self.ckpt, "--steps", 2, "-o", self.out,
                *more]

    def inpaint(self, image, mask, *more) -> list:
        args = ["inpaint", image, "a cat", "--ckpt", self.ckpt, "--steps", 2, "-o", self.out, *more]
        return args + (["--mask", mask] if mask is not None else [])


def png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b""))


class Evil:
    """Unpickling this runs `touch MARKER`: the loader must refuse before anything runs."""
    marker = ""

    def __reduce__(self):
        return (subprocess.call, (["touch", Evil.marker],))


def evil_ckpt(ctx: Ctx, zip_format: bool) -> Path:
    Evil.marker = str(ctx.tmp / "PWNED")
    p = ctx.inp / ("evil.ckpt" if zip_format else "evil-legacy.ckpt")
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": Evil()}, p, _use_new_zipfile_serialization=zip_format)
    return p


def no_marker(ctx):
    assert not (ctx.tmp / "PWNED").exists(), "the pickle's code ran"


def unet_only(ctx: Ctx) -> Path:
    sd = compvis_state_dict(tiny_model(SD1_TINY))
    prefix = "model.diffusion_model."
    save_safetensors({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, ctx.inp / "unet.safetensors")
    return ctx.inp / "unet.safetensors"


def zip_ckpt(ctx: Ctx, keep: float) -> Path:
    """A Lightning-style .ckpt of the tiny model, cut to `keep` of its bytes."""
    p = ctx.inp / "model.ckpt"
    torch.save({"state_dict": compvis_state_dict(tiny_model(SD1_TINY, seed=5))}, p)
    p.write_bytes(p.read_bytes()[:int(p.stat().st_size * keep)])
    return p


# --- faults injected by monkeypatching ---------------------------------------------------------------------------
def disk_full(after_images: int = 0):
    """Image.save writes 64 bytes of the PNG and then finds the disk full (after `after_images` good saves)."""
    def patch(ctx, mp):
        real, state = Image.Image.save, {"n": 0}

        def save(self, fp, *args, **kwargs):
            state["n"] += 1
            if state["n"] <= after_images:
                return real(self, fp, *args, **kwargs)
            buf = io.BytesIO()
            real(self, buf, *args, **kwargs)
            fp.write(buf.getvalue()[:64])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        mp.setattr(Image.Image, "save", save)
    return patch


def small_machine(ctx, mp):
    mp.setattr(memory, "available_memory", lambda device: (24 * 2**30, "this machine has 24.0 GiB of RAM"))


def nan_unet(ctx, mp):
    from ldmcli.models.ldm import LatentDiffusion
    real = LatentDiffusion.apply_model
    mp.setattr(LatentDiffusion, "apply_model", lambda self, x, t, *a, **k: real(self, x, t, *a, **k) * float("nan"))


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
    Case("mask-wrong-aspect", lambda c: c.inpaint(c.image(), c.mask(size=(16, 8))), 2, "does not fit"),
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
    Case("jobs-huge-height", lambda c: c.jobs(_jsonl({"prompt": "a", "height": 10**6})), 2, "px limit"),
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
    Case("size-over-cap", lambda c: c.t2i("-H", 32768), 2, "--height 32768 is over the 16384 px limit"),
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
    Case("steps-zero", lambda c: c.t2i("--steps", 0), 2, "--steps must be between"),
    Case("bad-dtype", lambda c: c.t2i("--dtype", "float8"), 2, "unknown --dtype"),
    Case("fp16-on-cpu", lambda c: c.t2i("--dtype", "float16", "--device", "cpu"), 2, "not supported on CPU"),
    Case("bad-device", lambda c: c.t2i("--device", "quantum"), 2, "unknown --device"),
    Case("bad-noise-device", lambda c: c.t2i("--noise-device", "gpu"), 2, "--noise-device must be auto or cpu"),
    # numerics: a NaN-producing UNet must not leave a black or garbage PNG behind
    Case("nan-latents", lambda c: c.t2i(), 1, "NaN/Inf", patch=nan_unet),
]
if not torch.cuda.is_available():
    CASES.append(Case("cuda-unavailable", lambda c: c.t2i("--device", "cuda"), 2, "no CUDA device"))

CASE_IDS = [c.id for c in CASES] + ["sigint-mid-batch"]
assert len(set(CASE_IDS)) == len(CASE_IDS)


# --- the contract checks ----------------------------------------------------------------------------------------
def _listing(ctx: Ctx, target: Optional[tuple] = None) -> dict:
    """Partial files (temp, hidden, unreadable PNGs, anything outside in/ and out/), lost files (keep.png or the
    --overwrite target changed) and the new complete PNGs."""
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
    partial += sorted(p.name for p in ctx.tmp.iterdir() if p.name not in ("in", "out", "PWNED"))
    new = [p for p in pngs if p.name != "keep.png" and (target is None or p.name != target[0])]
    return {"partial": partial, "lost": lost, "new_pngs": new}


def _seen(case_id: str, ctx: Ctx, target: Optional[tuple] = None) -> dict:
    seen = _listing(ctx, target)
    RESULTS[case_id] = {"passed": False, "partial": len(seen["partial"]), "lost": seen["lost"]}
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
    seen = _seen(case.id, ctx, target)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == case.code, r.stderr
    if case.code == 0:
        assert r.stderr == "" and len(r.stdout.split()) == case.pngs
    else:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ldm: error: "), f"not one error line: {r.stderr!r}"
        assert case.message in lines[0], lines[0]
    assert seen["partial"] == [] and seen["lost"] == 0, seen
    assert len(seen["new_pngs"]) == case.pngs, seen
    if case.check:
        case.check(ctx)
    RESULTS[case.id]["passed"] = True


# --- a real process and a real signal ---------------------------------------------------------------------------
def _default_sigint() -> None:
    """A shell starts background jobs (`make test &`, a CI runner's `cmd &`) with SIGINT ignored, and Python keeps an
    ignored SIGINT ignored, as it should; this test is about Ctrl-C reaching ldm, so the child gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_mid_batch(ctx):
    jobs = ctx.file("jobs.txt", "".join(f"prompt number {i}\n" for i in range(200)).encode())
    proc = subprocess.Popen([sys.executable, "-m", "ldmcli", "txt2img", "--from-file", str(jobs), "--ckpt",
                             str(ctx.ckpt), "--steps", "20", "-H", "32", "-W", "32", "-o", str(ctx.out), "-q"],
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
    seen = _seen("sigint-mid-batch", ctx)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["ldm: error: interrupted"], err
    assert 1 <= len(seen["new_pngs"]) < 200                   # interrupted mid-batch, after the first image
    assert set([first.strip()] + rest.split()) <= {str(p) for p in seen["new_pngs"]}   # printed = complete
    assert seen["partial"] == [] and seen["lost"] == 0, seen
    RESULTS["sigint-mid-batch"]["passed"] = True
