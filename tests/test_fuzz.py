"""Fuzzing the input parsers with hypothesis: whatever the bytes, only the documented one-line errors escape.

Documented errors (ldmcli/errors.py): InputError for a file or value that cannot be used, UsageError for a bad
option or combination (both LdmError, exit 2). Anything else escaping — KeyError, ValueError, struct.error,
RecursionError, ... — is a bug: the CLI would print "internal error" instead of naming the problem. Messages must
be one non-empty line, since they become the single `ldm: error:` line.

What a parser returns is checked too: a job that read_jobs accepts has fields of the right type and range, and the
batch runner's own checks (required fields, sampler settings, sizes) again raise only documented errors.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from ldmcli.cli import jobs
from ldmcli.errors import InputError, UsageError
from ldmcli.io.images import MAX_PIXELS, load_image, load_mask
from ldmcli.io.png import parse_a1111, read_metadata
from tiny import SD1_TINY

DOCUMENTED = (InputError, UsageError)
# LDM_FUZZ_EXAMPLES=5000 for a long hunt; 120 keeps the default run to a few seconds
FUZZ = settings(max_examples=int(os.environ.get("LDM_FUZZ_EXAMPLES", 120)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def documented(fn, *args, **kwargs):
    """fn(*args) or None when it raised a documented error (with a one-line message); anything else propagates."""
    try:
        return fn(*args, **kwargs)
    except DOCUMENTED as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        return None


def quietly(fn, *args, **kwargs):
    """documented(fn, ...), checking that nothing was warned or logged meanwhile: in the CLI, Python would print
    warnings and (with no logging set up) log records on stderr beside the one `ldm: error:` line."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = documented(fn, *args, **kwargs)
    finally:
        logging.getLogger().removeHandler(handler)
    assert not caught, [str(w.message) for w in caught]
    # the "PIL" logger has a NullHandler (ldmcli.io.images): its records reach configured handlers, never stderr
    assert all(r.name.startswith("PIL") for r in records), [r.getMessage() for r in records]
    return out


_SCRATCH: list = []   # [the folder _file writes to], set per module by the `scratch` fixture


@pytest.fixture(autouse=True, scope="module")
def scratch(tmp_path_factory):
    """hypothesis runs a test body for many examples, where a function-scoped tmp_path cannot follow: every example
    writes its input to one module-wide folder, overwriting the previous example's file of the same name."""
    _SCRATCH[:] = [tmp_path_factory.mktemp("fuzz")]


def _file(data: bytes, name: str) -> Path:
    path = _SCRATCH[0] / name
    path.write_bytes(data)
    return path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)


# --- job files ------------------------------------------------------------------------------------------------------
def _field_values(key):
    """Mostly plausible values for a Job field (so that many jobs get accepted), some hostile ones."""
    plausible = {"prompt": st.text(max_size=30), "negative_prompt": st.text(max_size=10),
                 "seed": st.integers(-5, 2**65), "steps": st.integers(-2, 2000), "scale": st.floats(-10, 50),
                 "sampler": st.sampled_from(["ddim", "plms", "euler_a", "dpmpp_2m", "magic", ""]),
                 "name": st.text(max_size=20), "n_samples": st.integers(-1, 4),
                 "height": st.integers(-8, 40000), "width": st.integers(-8, 40000),
                 "image": st.text(max_size=10), "mask": st.text(max_size=10), "layout": st.text(max_size=10),
                 "segmap": st.text(max_size=10), "extra": st.dictionaries(st.text(max_size=6), json_values,
                                                                          max_size=3)}
    return plausible.get(key, json_values) | json_values


@st.composite
def job_objects(draw):
    keys = draw(st.lists(st.sampled_from(sorted(jobs._CHECKS)) | st.text(max_size=6), max_size=6, unique=True))
    return {k: draw(_field_values(k)) for k in keys}


def _check_job(job: jobs.Job) -> None:
    """The types and ranges read_jobs promises for an accepted job."""
    assert isinstance(job.prompt, str) and isinstance(job.negative_prompt, str)
    assert job.seed is None or (type(job.seed) is int and 0 <= job.seed < 2**64)
    for k in ("steps", "n_samples", "height", "width"):
        v = getattr(job, k)
        assert v is None or (type(v) is int and v >= 1), (k, v)
    assert job.scale is None or (type(job.scale) is float and math.isfinite(job.scale))
    assert isinstance(job.extra, dict)
    for k in ("image", "mask", "layout", "segmap", "name", "sampler"):
        v = getattr(job, k)
        assert v is None or (isinstance(v, str) and "\x00" not in v), (k, v)


def _through_batch_checks(job: jobs.Job) -> None:
    """What the batch runner checks before a model runs: required fields, sampler settings, sizes."""
    from ldmcli.cli import runner as batch
    from ldmcli.tasks.geometry import check_size

    class Model:   # check_size needs only the config
        cfg = SD1_TINY
    batch._check_required("txt2img", job)
    batch._settings({"sampler": "ddim", "eta": None, "karras": False, "noise_device": None}, job, SD1_TINY)
    check_size(Model, job.height or 16, job.width or 16)


@FUZZ
@given(st.lists(job_objects(), min_size=1, max_size=4), st.booleans())
@example([{"prompt": "a red circle"}], False)      # the batch checks run on every draw, not only on lucky ones
@example([{"prompt": ""}], True)
def test_jsonl_jobs(objects, crlf):
    text = ("\r\n" if crlf else "\n").join(json.dumps(o, allow_nan=True) for o in objects)
    got = documented(jobs.read_jobs, _file(text.encode("utf-8", "surrogatepass"), "jobs.jsonl"))
    for job in got or []:
        _check_job(job)
        documented(_through_batch_checks, job)


@FUZZ
@given(st.lists(st.text(max_size=40), min_size=0, max_size=6), st.sampled_from(["", "\ufeff"]))
def test_text_jobs(lines, bom):
    data = (bom + "\n".join(lines)).encode("utf-8", "surrogatepass")
    got = documented(jobs.read_jobs, _file(data, "jobs.txt"))
    for job in got or []:
        _check_job(job)
        assert job.prompt == job.prompt.strip() and job.prompt and not job.prompt.startswith("#")


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([b"", b"{", b'{"prompt": "a"}\n', b"\xef\xbb\xbf"]))
def test_job_bytes(data, prefix):
    for job in documented(jobs.read_jobs, _file(prefix + data, "jobs.txt")) or []:
        _check_job(job)


# --- images and masks -----------------------------------------------------------------------------------------------
def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


SAMPLES = [_encoded(f, m) for f, m in [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"),
                                       ("JPEG", "RGB"), ("JPEG", "CMYK"), ("GIF", "P"), ("BMP", "RGB"),
                                       ("TIFF", "RGB"), ("TIFF", "I;16"), ("WEBP", "RGB"), ("ICO", "RGBA")]
           if f in Image.registered_extensions().values()]


@st.composite
def mutated_images(draw):
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)


@FUZZ
@given(mutated_images())
def test_load_image(data):
    img = quietly(load_image, _file(data, "x.img"))
    if img is not None:
        assert img.mode == "RGB" and img.width * img.height <= MAX_PIXELS


@FUZZ
@given(mutated_images(), st.none() | st.tuples(st.integers(1, 40), st.integers(1, 40)), st.booleans(),
       st.floats(-1, 3))
def test_load_mask(data, size, invert, blur):
    m = quietly(load_mask, _file(data, "m.img"), size=size, invert=invert, blur=blur)
    if m is not None:
        assert m.dtype == np.float32 and m.ndim == 2 and 0.0 <= m.min() <= m.max() <= 1.0
        if size is not None:
            assert m.shape == (size[1], size[0])


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
       st.text(max_size=100) | json_values.map(json.dumps))
def test_png_metadata(parameters, record):
    """read_metadata on PNGs with arbitrary `parameters` and `ldmcli` chunks; parse_a1111 on any text."""
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("ldmcli", record)
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG", pnginfo=info)
    meta = documented(read_metadata, _file(buf.getvalue(), "m.png"))
    assert meta is None or "parameters" in meta
    assert isinstance(parse_a1111(parameters), dict)


# --- what the fuzzing above found: Pillow's own stderr noise, in a real process ---------------------------------
def tiff(bomb: bool) -> bytes:
    """A 9x7 RGB TIFF, patched in its IFD entries. bomb=False: SamplesPerPixel 32259 (Pillow refuses it and logs an
    ERROR line on its logger); bomb=True: 65535x65535 with StripByteCounts past the end of the file (the header
    parse warns: UserWarning)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for at in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", data[ifd:ifd + 2])[0], 12):
        tag, kind = struct.unpack("<HH", data[at:at + 4])
        if tag == 277 and not bomb:
            data[at + 8:at + 10] = struct.pack("<H", 32259)
        if tag in (256, 257) and bomb:
            data[at + 8:at + 12] = struct.pack("<HH", 65535, 0) if kind == 3 else struct.pack("<I", 65535)
        if tag == 279 and bomb:
            data[at + 4:at + 8] = struct.pack("<I", 100000)
    return bytes(data)


def test_pillow_noise_stays_off_stderr_in_a_real_process(tmp_path, sd1_file):
    """Outside pytest (whose logging handlers would swallow it) Pillow's ERROR log line and UserWarnings about
    hostile TIFFs must not reach stderr: each failed job is exactly one `ldm: error:` line."""
    ckpt = sd1_file
    Image.new("L", (9, 7), 255).save(tmp_path / "mask.png")
    (tmp_path / "a.tif").write_bytes(tiff(bomb=False))
    (tmp_path / "b.tif").write_bytes(tiff(bomb=True))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"image": str(tmp_path / n), "mask": str(tmp_path / "mask.png")}) + "\n"
                            for n in ("a.tif", "b.tif")))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-W", "default", "-m", "ldmcli", "inpaint", "--from-file", str(jobs),
                          "--ckpt", str(ckpt), "--steps", "2", "-o", str(tmp_path / "out"), "-q"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ldm: error: job 1: image ") and "not an image file" in lines[0]
    assert lines[1].startswith("ldm: error: job 2: image ") and "65535x65535 pixels" in lines[1], lines
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --- layouts (ldmcli/layout.py, when present) ---------------------------------------------------------------------
def _layout_module():
    """Imported per test, so that only these tests skip while layout.py does not exist."""
    return pytest.importorskip("ldmcli.io.layout")


box_objects = st.fixed_dictionaries(
    {}, optional={"label": st.text(max_size=8) | st.integers(-3, 9000) | json_values,
                  "box": st.lists(st.floats(-5, 600) | st.integers(-5, 600) | json_values, max_size=5) | json_values,
                  "extra": json_values})


@FUZZ
@given(st.lists(box_objects, max_size=5) | json_values, st.integers(1, 512), st.integers(1, 512))
def test_layout_json(obj, width, height):
    L = _layout_module()
    boxes = documented(L.read_layout, _file(json.dumps(obj, allow_nan=True).encode(), "layout.json"))
    if boxes:
        out = documented(L.normalised_boxes, boxes, width, height)
        for x0, y0, x1, y1 in out or []:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([b"", b"[", b'[{"label": "a", "box": [0, 0, 1, 1]}', b"\xef\xbb\xbf"]))
def test_layout_bytes(data, prefix):
    L = _layout_module()
    documented(L.read_layout, _file(prefix + data, "layout.json"))


@FUZZ
@given(st.text(max_size=60) | st.lists(st.text(max_size=6) | st.floats(allow_nan=True).map(str), max_size=7)
       .map(" ".join))
def test_layout_box_option(text):
    L = _layout_module()
    box = documented(L.parse_box, text)
    if box is not None:
        assert len(box.box) == 4 and all(math.isfinite(v) for v in box.box)
    documented(L.boxes_from_option, [text])
