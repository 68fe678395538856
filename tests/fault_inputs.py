"""Inputs and injected faults for the fault suite (tests/test_faults.py): the files each case feeds the CLI."""
from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ldmcli.sampling.memory as memory
from ldmcli.loading.checkpoint import config_metadata, save_safetensors
from tiny import SD1_TINY, compvis_state_dict, tiny_model


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


def big_machine(ctx, mp):
    """1 TiB of RAM: what refuses the size is then time, not memory."""
    mp.setattr(memory, "available_memory", lambda device: (2**40, "this machine has 1.0 TiB of RAM"))


def nan_unet(ctx, mp):
    from ldmcli.models.ldm import LatentDiffusion
    real = LatentDiffusion.apply_model
    mp.setattr(LatentDiffusion, "apply_model", lambda self, x, t, *a, **k: real(self, x, t, *a, **k) * float("nan"))


def no_load(ctx, mp):
    """The case must be refused before the model loads: loading fails the test."""
    import ldmcli.cli.runner as runner
    mp.setattr(runner, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))


def env(**values):
    def patch(ctx, mp):
        no_load(ctx, mp)
        for k, v in values.items():
            mp.setenv(k, v)
    return patch


def fifo(ctx: Ctx, name: str) -> Path:
    os.mkfifo(ctx.inp / name)
    return ctx.inp / name


def header_config(ctx: Ctx, text) -> Path:
    """The tiny SD1 checkpoint with `text` as its `ldmcli_config` header (a dict: the real config, changed)."""
    if isinstance(text, dict):
        real = json.loads(config_metadata(SD1_TINY)["ldmcli_config"])
        real["unet"].update(text)
        text = json.dumps(real)
    p = ctx.inp / "header.safetensors"
    save_safetensors(compvis_state_dict(tiny_model(SD1_TINY)), p, {"ldmcli_config": text})
    return p


def no_tensors(ctx: Ctx) -> Path:
    save_safetensors({}, ctx.inp / "empty.safetensors", config_metadata(SD1_TINY))
    return ctx.inp / "empty.safetensors"


def deep_yaml(ctx: Ctx, depth: int = 5000) -> Path:
    """A YAML config nested `depth` lists deep (PyYAML's composer recurses once per level)."""
    return ctx.file("deep.yaml", b"model: " + b"[" * depth + b"]" * depth + b"\n")


def replayable(ctx: Ctx, **changes) -> Path:
    """A PNG whose ldmcli record is a plausible txt2img record with `changes` (None deletes a field)."""
    from PIL import PngImagePlugin
    record = {"task": "txt2img", "prompt": "a", "negative_prompt": "", "steps": 2, "sampler": "ddim", "scale": 3.0,
              "eta": 0.0, "karras": False, "seed": 1, "width": 16, "height": 16, "ckpt_path": str(ctx.ckpt),
              "extra": {}}
    record.update(changes)
    record = {k: v for k, v in record.items() if v is not None}
    info = PngImagePlugin.PngInfo()
    info.add_text("ldmcli", json.dumps(record))
    Image.new("RGB", (16, 16)).save(ctx.inp / "old.png", pnginfo=info)
    return ctx.inp / "old.png"


def colour_map(ctx: Ctx) -> Path:
    Image.new("RGB", (16, 16), (10, 20, 30)).save(ctx.inp / "seg.png")
    return ctx.inp / "seg.png"
