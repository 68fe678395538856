"""Writing results: atomic PNGs that carry their generation record, deterministic file names, PNG on stdout.

Every PNG gets two text chunks: `parameters`, the AUTOMATIC1111 "infotext" that image browsers and web UIs read
(prompt line, `Negative prompt:` line when there is one, then `Steps: 50, Sampler: DDIM, CFG scale: 7.5, ...`),
and `ldmcli`, the full job record as JSON, which `read_metadata` returns and a re-run can start from.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import re
import sys
from pathlib import Path
from typing import BinaryIO, Optional, Union

from PIL import Image, PngImagePlugin

from ldmcli.errors import InputError, LdmError, OutputClosed, UsageError, one_line
from ldmcli.io.atomic import atomic_write
from ldmcli.io.images import read_image
from ldmcli.sampling.table import SAMPLERS, schedule_label

PathLike = Union[str, Path]

# A1111's labels in A1111's order, with the job-record keys they are read from ("size" is width x height).
_A1111_FIELDS = (
    ("Steps", "steps"),
    ("Sampler", "sampler"),
    ("Schedule type", "schedule"),
    ("CFG scale", "scale"),
    ("Seed", "seed"),
    ("Size", "size"),
    ("Model hash", "model_hash"),
    ("Model", "model"),
    ("VAE hash", "vae_hash"),
    ("VAE", "vae"),
    ("Denoising strength", "denoising_strength"),
    ("Clip skip", "clip_skip"),
    ("Lora hashes", "lora_hashes"),
    ("TI hashes", "ti_hashes"),
    ("Eta DDIM", "eta_ddim"),
)
# One `Label: value` pair of the settings line; a value is a JSON string or runs to the next comma (as A1111).
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/+.]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_UNSAFE_NAME = re.compile(r"[^\w.\-]+")  # keeps letters and digits (any script), '_', '.', '-'


def _a1111_quote(value) -> str:
    """A1111's quoting: a value holding a comma, colon or newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(record: dict) -> str:
    """The A1111 `parameters` text of a job record (keys prompt, negative_prompt, steps, sampler, scale, seed,
    width, height, model_hash, model; missing, None or "" ones are left out, as A1111 leaves them out)."""
    values = dict(record)
    if record.get("width") and record.get("height"):
        values["size"] = f"{record['width']}x{record['height']}"
    if values.get("sampler") is not None:
        spec = SAMPLERS.get(str(values["sampler"]))    # A1111's spelling; another name is written as it is
        values["sampler"] = spec.label if spec else values["sampler"]
    # A1111 (1.9 and later) names the σ schedule apart from the sampler, and writes DDIM's η when it is not 0
    values["schedule"] = "Karras" if record.get("karras") else None
    if record.get("schedule") and record.get("sampler") in SAMPLERS:     # --schedule: A1111's "Schedule type"
        values["schedule"] = schedule_label(record["sampler"], record["schedule"])
    values["eta_ddim"] = record.get("eta") if record.get("sampler") == "ddim" and record.get("eta") else None
    settings = ", ".join(f"{label}: {_a1111_quote(values[key])}"
                         for label, key in _A1111_FIELDS if values.get(key) not in (None, ""))
    lines = [str(record.get("prompt") or "")]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    return "\n".join(lines + [settings])


def parse_a1111(text: str) -> dict:
    """The inverse of `a1111_parameters`: {"prompt", "negative_prompt", and each settings label: str value}."""
    *head, last = text.split("\n")
    pairs = _A1111_PAIR.findall(last)
    if len(pairs) < 3:  # A1111's own test for "the last line is the settings line"
        head, pairs = head + [last], []
    prompt, negative = [], None  # every line after the first "Negative prompt:" belongs to it, as in A1111
    for line in head:
        if negative is None and line.startswith("Negative prompt:"):
            negative = [line[len("Negative prompt:"):]]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    negative = negative or []
    out = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    for label, value in pairs:
        with contextlib.suppress(ValueError):
            value = json.loads(value) if value.startswith('"') else value
        out[label.strip()] = value.strip() if isinstance(value, str) else value
    return out


def _png_info(metadata: Optional[dict]) -> Optional[PngImagePlugin.PngInfo]:
    if not metadata:
        return None
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(metadata))  # Pillow writes iTXt when not Latin-1
    info.add_text("ldmcli", json.dumps(metadata, sort_keys=True, default=str))  # ASCII: a plain tEXt chunk
    return info


def _write_error(path: Path, err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on device writing {path}"
    if isinstance(err, OSError) and err.errno == getattr(errno, "EDQUOT", None):
        return f"disk quota exceeded writing {path}"
    if isinstance(err, OSError) and err.strerror:
        return f"cannot write {path}: {err.strerror}"
    return f"cannot write {path}: {one_line(err)}"


def write_png_atomic(img: Image.Image, path: PathLike, metadata: Optional[dict] = None) -> Path:
    """Write `img` as a PNG at `path`, all or nothing (`atomic.atomic_write`), creating missing parent folders.

    Errors become one-line LdmErrors ("no space left on device writing X"), while KeyboardInterrupt (and other
    BaseExceptions) are re-raised as they are so the CLI still exits 130.
    """
    path = Path(path)
    try:
        return atomic_write(path, lambda f: img.save(f, format="PNG", pnginfo=_png_info(metadata)))
    except Exception as e:
        raise LdmError(_write_error(path, e)) from e


def write_png_stdout(img: Image.Image, metadata: Optional[dict] = None, stream: Optional[BinaryIO] = None) -> None:
    """Write `img` as one PNG to stdout (`-o -`), refusing a terminal. `stream` replaces stdout in tests."""
    stream = stream if stream is not None else sys.stdout.buffer
    if stream.isatty():
        raise UsageError("refusing to write PNG data to a terminal: redirect stdout or pass -o FILE")
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=_png_info(metadata))
    try:
        stream.write(buf.getvalue())
        stream.flush()
    except BrokenPipeError:
        raise OutputClosed("stdout was closed before the PNG was written (broken pipe)") from None


def read_metadata(path: PathLike) -> dict:
    """The generation record of a PNG: {"parameters": parsed A1111 text, "ldmcli": job record}, for the chunks
    present; an InputError when it has neither."""
    info = read_image(path, "image").info
    out = {}
    if isinstance(info.get("parameters"), str):
        out["parameters"] = parse_a1111(info["parameters"])
    if isinstance(info.get("ldmcli"), str):
        try:
            out["ldmcli"] = json.loads(info["ldmcli"])
        except ValueError as e:
            raise InputError(f"{path}: the ldmcli metadata is not valid JSON ({one_line(e)})") from None
    if not out:
        raise InputError(f"{path}: no generation metadata (neither an 'ldmcli' nor a 'parameters' text chunk)")
    return out


def safe_name(name: str, max_bytes: int = 100) -> str:
    """`name` as one harmless file-name component: runs of anything but letters, digits, '_', '.', '-' (path
    separators, spaces, shell characters) become '_'; no leading dot or dash; at most `max_bytes` UTF-8 bytes."""
    name = _UNSAFE_NAME.sub("_", name).strip("._-")
    return name.encode("utf-8")[:max_bytes].decode("utf-8", "ignore").rstrip("._-")


def output_name(job_index: int, name: Optional[str], seed: int, sample_index: int, ext: str = "png",
                tag: str = "") -> str:
    """The file name of one sample, the same in every run and shard: `00042-1a2b3c-s1234-0.png` (job index, the
    job's fingerprint `tag` (jobs.fingerprint), seed, sample), or `<name>-s1234-0.png` when the job has a name
    (sanitised by `safe_name`; the user chose it, so it is kept as given)."""
    stem = safe_name(name) if name else ""
    if not stem:
        stem = f"{job_index:05d}-{tag}" if tag else f"{job_index:05d}"
    return f"{stem}-s{seed}-{sample_index}.{ext}"
