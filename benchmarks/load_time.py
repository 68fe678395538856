"""Checkpoint load time against the time to read the file (issue target: load ≤ 1.5 × read).

    python -m benchmarks.load_time                 # full-size SD1.5 layout, fp16 (≈ 2.1 GB), in a temp dir
    python -m benchmarks.load_time --preset sd2-base --dtype float32 --keep /tmp/sd2.safetensors

Writes a random-weight checkpoint in the CompVis layout, then times (page cache warm for both, best of N):
reading every byte of the file, and `ldmcli.loading.checkpoint.load_model` in the file's dtype (meta-device build, no
random init, tensors assigned from the memory-mapped file) — the ratio the target is about — and, separately,
load + conversion to float32 (what a CPU run of an fp16 file adds). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ldmcli.loading.checkpoint import load_model, save_safetensors


def write_checkpoint(preset: str, dtype: torch.dtype, path: Path) -> int:
    """A full-size random checkpoint of `preset` (tensor names and shapes from a meta build); returns its bytes."""
    from ldmcli.models.ldm import LatentDiffusion
    from ldmcli.loading.presets import preset as get
    with torch.device("meta"):
        model = LatentDiffusion(get(preset))
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.02).to(dtype) for k, v in model.state_dict().items()}
    save_safetensors(sd, path)
    return path.stat().st_size


def read_all(path: Path, chunk: int = 64 << 20) -> float:
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def timed_load(path: Path, preset: str, dtype: torch.dtype) -> float:
    t0 = time.perf_counter()
    model, _ = load_model(path, config=preset, dtype=dtype)
    elapsed = time.perf_counter() - t0
    del model
    return elapsed


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_time")
    p.add_argument("--preset", default="sd1")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", help="write the checkpoint here and keep it (default: a temp file)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "model.safetensors"
        if not path.exists():
            write_checkpoint(args.preset, dtype, path)
        size = path.stat().st_size
        read_all(path)                                   # warm the page cache for both measurements
        read_s = min(read_all(path) for _ in range(args.repeats))
        load_s = min(timed_load(path, args.preset, dtype) for _ in range(args.repeats))
        # the CPU default runs in float32: the fp16 -> fp32 conversion is extra work on top of loading
        load_fp32_s = min(timed_load(path, args.preset, torch.float32) for _ in range(args.repeats))
    rec = {"preset": args.preset, "dtype": args.dtype, "bytes": size, "read_s": read_s, "load_s": load_s,
           "ratio": load_s / read_s, "target_ratio": 1.5, "load_and_convert_to_float32_s": load_fp32_s,
           "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    print(json.dumps(rec), flush=True)
    return rec


if __name__ == "__main__":
    main()
