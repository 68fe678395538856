"""Input loading (ldmcli.io.images), atomic outputs with metadata (ldmcli.io.png) and the stderr console."""
import errno
import io
import os
import struct
import tempfile
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ldmcli.io import atomic
from ldmcli.cli.console import Console
from ldmcli.errors import InputError, LdmError, UsageError
from ldmcli.io.images import (MAX_PIXELS, load_color_map, load_image, load_index_map, load_mask, pil_to_tensor,
                           tensor_to_pil)
from ldmcli.io.png import (a1111_parameters, output_name, parse_a1111, read_metadata, write_png_atomic,
                            write_png_stdout)

RECORD = dict(prompt="a cat", negative_prompt="blurry", steps=50, sampler="ddim", scale=7.5, seed=1,
              width=512, height=512, model_hash="abcd1234", model="name")


def noise(h=32, w=48, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def save(tmp_path, img, name="in.png", **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w, h, depth=8, colour=2):
    """A PNG whose IHDR claims w x h, with one tiny IDAT: nothing to decode before the size check."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + png_chunk(b"IEND", b""))


# ---- load_image: failures, each one InputError line naming the file ----

def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="nope.png: no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture\n")
    with pytest.raises(InputError, match=r"notes\.png: not an image file"):
        load_image(path)


def test_truncated_png(tmp_path):
    data = (save(tmp_path, Image.fromarray(noise(64, 64)))).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: truncated or corrupt") as err:
        load_image(cut)
    assert "\n" not in str(err.value)


def test_corrupt_png_data(tmp_path):
    data = bytearray(save(tmp_path, Image.fromarray(noise(64, 64))).read_bytes())
    data[100:140] = b"\xff" * 40  # inside IDAT: the CRC and the zlib stream are both broken
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.png"):
        load_image(bad)


def test_huge_header_refused_quickly_with_size(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100000, 100000))
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb\.png: 100000x100000 pixels"):
        load_image(path)
    assert time.perf_counter() - start < 2.0


def test_over_our_limit_but_under_pillows(tmp_path):
    w, h = 9000, 8000  # 72 MP: over MAX_PIXELS, under Pillow's own error threshold
    assert MAX_PIXELS < w * h < 2 * Image.MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(w, h))
    with pytest.raises(InputError, match="9000x8000 pixels"):
        load_image(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_image_from_a_pipe(tmp_path):
    """`--image <(curl ...)`: a pipe cannot seek, so its bytes are read first."""
    a = noise()
    data = io.BytesIO()
    Image.fromarray(a).save(data, format="PNG")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data.getvalue(),))
    writer.start()
    img = load_image(fifo)
    writer.join()
    assert np.array_equal(np.asarray(img), a)


# ---- load_image: modes ----

def test_rgb_round_trip(tmp_path):
    a = noise()
    img = load_image(save(tmp_path, Image.fromarray(a)))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), a)


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = save(tmp_path, Image.fromarray(grey))
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_rgb_png(tmp_path):
    rgb16 = np.array([[[65535, 0, 32896], [257, 514, 771]]], dtype=">u2")  # 1 x 2 pixels
    raw = b"".join(b"\0" + row.tobytes() for row in rgb16)  # filter type 0 per scanline
    path = tmp_path / "rgb16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (2, 1)
    assert np.asarray(img).tolist() == [[[255, 0, 128], [1, 2, 3]]]


def test_palette_png(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    img = load_image(save(tmp_path, pal))
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[0, 0]) == (255, 0, 0) and tuple(np.asarray(img)[0, 1]) == (0, 255, 0)


def test_palette_with_transparency_goes_on_black(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    pal.putdata([0, 1])
    img = load_image(save(tmp_path, pal, transparency=0))
    assert np.asarray(img).tolist() == [[[0, 0, 0], [10, 20, 30]]]


def test_rgba_composited_on_black(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 128], [200, 100, 50, 0]]], dtype=np.uint8)
    img = load_image(save(tmp_path, Image.fromarray(rgba)))
    assert np.asarray(img).tolist() == [[[255, 0, 0], [128, 0, 0], [0, 0, 0]]]


def test_la_and_cmyk(tmp_path):
    la = Image.fromarray(np.array([[[200, 255], [200, 0]]], dtype=np.uint8))
    assert np.asarray(load_image(save(tmp_path, la, "la.png")))[0, :, 0].tolist() == [200, 0]
    cmyk = Image.new("CMYK", (3, 2), (0, 0, 0, 0))  # no ink = white
    img = load_image(save(tmp_path, cmyk, "c.tif"))
    assert img.mode == "RGB" and np.asarray(img).min() == 255


def test_exif_orientation_applied(tmp_path):
    im = Image.fromarray(noise(10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img = load_image(save(tmp_path, im, "r.jpg", exif=exif.tobytes()))
    assert img.size == (10, 20)


# ---- masks and label maps ----

def test_mask_values_invert_and_alpha(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:, 4:] = 255
    mask = load_mask(save(tmp_path, Image.fromarray(m)))
    assert mask.dtype == np.float32 and mask.shape == (8, 8)
    assert mask[:, :4].max() == 0 and mask[:, 4:].min() == 1
    assert np.array_equal(load_mask(tmp_path / "in.png", invert=True), 1 - mask)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, 4:] = 255  # white painted on a transparent background
    assert np.array_equal(load_mask(save(tmp_path, Image.fromarray(rgba), "a.png")), mask)


def test_mask_same_aspect_is_resized_nearest(tmp_path):
    m = np.zeros((48, 64), np.uint8)
    m[:, 32:] = 255
    mask = load_mask(save(tmp_path, Image.fromarray(m)), size=(128, 96))
    assert mask.shape == (96, 128) and set(np.unique(mask).tolist()) == {0.0, 1.0}
    assert mask[:, :64].max() == 0 and mask[:, 64:].min() == 1


def test_mask_other_aspect_refused_with_both_sizes(tmp_path):
    path = save(tmp_path, Image.new("L", (64, 64), 255), "m.png")
    with pytest.raises(InputError, match=r"m\.png: 64x64 .*128x96"):
        load_mask(path, size=(128, 96))


def test_mask_blur_feathers(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[:, 16:] = 255
    mask = load_mask(save(tmp_path, Image.fromarray(m)), blur=3)
    assert 0 <= mask.min() and mask.max() <= 1
    assert 0 < mask[0, 15] < 1 and mask[0, 0] == 0 and mask[0, 31] == 1
    with pytest.raises(UsageError):
        load_mask(tmp_path / "in.png", blur=-1)


def test_index_map_l_and_p(tmp_path):
    ids = np.array([[0, 3, 181]], dtype=np.uint8)
    assert load_index_map(save(tmp_path, Image.fromarray(ids), "l.png")).tolist() == [[0, 3, 181]]
    pal = Image.new("P", (3, 1))
    pal.putpalette([(i * 7) % 256 for i in range(768)])
    pal.putdata([0, 3, 181])
    out = load_index_map(save(tmp_path, pal, "p.png"))
    assert out.dtype == np.int64 and out.tolist() == [[0, 3, 181]]


def test_index_map_rgb_refused(tmp_path):
    with pytest.raises(InputError, match="palette file"):
        load_index_map(save(tmp_path, Image.fromarray(noise())))


def test_color_map(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 0, 255]], [[0, 0, 255], [255, 0, 0]]], dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(rgb))
    assert load_color_map(path, {(255, 0, 0): 7, (0, 0, 255): 2}).tolist() == [[7, 2], [2, 7]]
    with pytest.raises(InputError, match=r"1 colour\(s\) not in the palette: \(0, 0, 255\)"):
        load_color_map(path, {(255, 0, 0): 7})


def test_color_map_lists_at_most_five_unknown(tmp_path):
    path = save(tmp_path, Image.fromarray(noise(4, 4)))
    with pytest.raises(InputError, match=r"16 colour\(s\) .* and 11 more") as err:
        load_color_map(path, {})
    assert str(err.value).count("(") == 6  # "colour(s)" + five colours


# ---- tensors ----

def test_pil_to_tensor_range_and_shape():
    a = np.array([[[0, 255, 51]]], dtype=np.uint8)
    x = pil_to_tensor(Image.fromarray(a))
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 1.0, 2 * 51 / 255 - 1]))


def test_tensor_to_pil_clamps_and_truncates():
    # (x+1)/2*255 = 127.9 truncates to 127 (no rounding), out-of-range values clamp
    x = torch.tensor([127.9 / 255 * 2 - 1, -3.0, 3.0]).reshape(1, 3, 1, 1)
    (img,) = tensor_to_pil(x)
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [127, 0, 255]
    assert len(tensor_to_pil(torch.zeros(2, 3, 4, 4))) == 2


def test_tensor_round_trip_within_one_level():
    a = noise(8, 8)
    back = np.asarray(tensor_to_pil(pil_to_tensor(Image.fromarray(a)))[0]).astype(int)
    assert np.abs(back - a).max() <= 1


# ---- fuzzing: anything but an InputError is a bug ----

_PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8\xff\xe0", b"II*\x00", b"RIFF\0\0\0\0WEBP"]


def _load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.png")
        with open(path, "wb") as f:
            f.write(data)
        try:
            img = load_image(path)
        except InputError:
            return
        assert img.mode == "RGB"


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_PREFIXES), st.binary(max_size=512))
def test_fuzz_load_image_bytes(prefix, data):
    _load_bytes(prefix + data)


_VALID_PNG = io.BytesIO()
Image.fromarray(noise(6, 5)).save(_VALID_PNG, format="PNG")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID_PNG.getvalue()) - 1), st.integers(0, 255)), max_size=6),
       st.integers(1, len(_VALID_PNG.getvalue())))
def test_fuzz_load_image_mutated_png(flips, length):
    data = bytearray(_VALID_PNG.getvalue())
    for at, value in flips:
        data[at] = value
    _load_bytes(bytes(data[:length]))


# ---- outputs ----

def test_a1111_parameters_format():
    assert a1111_parameters(RECORD) == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model hash: abcd1234, Model: name")
    no_neg = a1111_parameters({**RECORD, "negative_prompt": "", "model_hash": "", "model": "a, b: c"})
    assert no_neg == 'a cat\nSteps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: "a, b: c"'


def test_a1111_parameters_name_the_schedule_and_ddim_eta():
    """As A1111 1.9+ writes them: `Schedule type: Karras` beside the sampler, `Eta DDIM` when DDIM's η is not 0."""
    karras = a1111_parameters({**RECORD, "negative_prompt": "", "sampler": "dpmpp_2m", "karras": True, "eta": 0.0})
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5" in karras and "Eta" not in karras
    ddim = a1111_parameters({**RECORD, "sampler": "ddim", "eta": 0.5})
    assert ddim.endswith("Model: name, Eta DDIM: 0.5") and "Schedule type" not in ddim
    assert parse_a1111(ddim)["Eta DDIM"] == "0.5" and parse_a1111(karras)["Schedule type"] == "Karras"


def test_a1111_parse_round_trip():
    record = {**RECORD, "prompt": "line one\nline two", "model": 'odd, "name": x'}
    parsed = parse_a1111(a1111_parameters(record))
    assert parsed["prompt"] == "line one\nline two" and parsed["negative_prompt"] == "blurry"
    assert parsed["Steps"] == "50" and parsed["CFG scale"] == "7.5" and parsed["Model"] == 'odd, "name": x'


def test_write_and_read_metadata(tmp_path):
    record = {**RECORD, "prompt": "ein Bär – 熊", "extra": {"strength": 0.5}}
    path = write_png_atomic(Image.fromarray(noise()), tmp_path / "sub" / "out.png", record)
    assert np.array_equal(np.asarray(Image.open(path)), noise())
    meta = read_metadata(path)
    assert meta["ldmcli"] == record
    assert meta["parameters"]["prompt"] == "ein Bär – 熊" and meta["parameters"]["Seed"] == "1"
    assert os.listdir(tmp_path / "sub") == ["out.png"]


def test_read_metadata_without_chunks(tmp_path):
    with pytest.raises(InputError, match="no generation metadata"):
        read_metadata(write_png_atomic(Image.fromarray(noise()), tmp_path / "plain.png"))


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_save(self, fp, *args, **kwargs):
    fp.write(b"\x89PNG partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["save", "fsync"])
def test_disk_full_leaves_nothing_behind(tmp_path, monkeypatch, where):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")
    if where == "save":
        monkeypatch.setattr(Image.Image, "save", _fail_save)
    else:
        monkeypatch.setattr(atomic.os, "fsync", _fail_fsync)
    with pytest.raises(LdmError, match=f"^no space left on device writing {target}$"):
        write_png_atomic(Image.fromarray(noise()), target, RECORD)
    assert os.listdir(tmp_path) == ["out.png"] and target.read_bytes() == b"previous result"


def test_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    def interrupted(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise KeyboardInterrupt
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")
    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_png_atomic(Image.fromarray(noise()), target)
    assert os.listdir(tmp_path) == ["out.png"] and target.read_bytes() == b"previous result"


def test_unwritable_location_is_ldm_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LdmError, match="cannot write"):
        write_png_atomic(Image.fromarray(noise()), tmp_path / "file" / "out.png")


def test_png_to_stdout(capsysbinary):
    buf = io.BytesIO()
    write_png_stdout(Image.fromarray(noise()), RECORD, stream=buf)
    buf.seek(0)
    img = Image.open(buf)
    assert img.format == "PNG" and img.info["parameters"].startswith("a cat\n")

    class Tty(io.BytesIO):
        def isatty(self):
            return True
    with pytest.raises(UsageError, match="terminal"):
        write_png_stdout(Image.fromarray(noise()), stream=Tty())


def test_output_names():
    assert output_name(42, None, 1234, 0) == "00042-s1234-0.png"
    assert output_name(42, "cat", 1234, 3, "jpg") == "cat-s1234-3.jpg"
    for name in ["../../etc/passwd", "/abs/path", ".hidden", "a\\b", "..", "-rf *", "x\0y", "é/ü"]:
        out = output_name(7, name, 1, 0)
        assert "/" not in out and "\\" not in out and "\0" not in out and " " not in out
        assert not out.startswith((".", "-")), out
    assert output_name(7, "..", 1, 0) == "00007-s1-0.png"
    assert output_name(7, "a cat: on/a mat", 1, 0) == "a_cat_on_a_mat-s1-0.png"
    assert len(output_name(1, "x" * 1000, 1, 0).encode()) < 255


# ---- console ----

def test_console_plain_progress_every_tenth(capsys):
    con = Console()
    with con.progress(50, "sampling") as advance:
        for _ in range(50):
            advance()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"sampling: step {k}/50" for k in range(5, 51, 5)]


def test_console_small_totals_track_and_quiet(capsys):
    con = Console()
    assert list(con.track([1, 2, 3], desc="jobs")) == [1, 2, 3]
    assert capsys.readouterr().err.splitlines() == ["jobs: step 1/3", "jobs: step 2/3", "jobs: step 3/3"]
    quiet = Console(quiet=True)
    with quiet.progress(10) as advance:
        advance(10)
    quiet.log("hidden")
    quiet.error("boom\nsecond line")
    quiet.warn("careful")
    assert capsys.readouterr() == ("", "ldm: error: boom second line\nldm: warning: careful\n")


def test_console_rich_on_tty_never_touches_stdout(capsys):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    stream = Tty()
    con = Console(stream=stream)
    with con.progress(3, "batch") as outer:
        for _ in range(3):
            with con.progress(4, "steps") as inner:
                inner(4)
            con.log("a message")
            print("data on stdout")
            outer()
    assert con._live is None
    assert "a message" in stream.getvalue() and "batch" in stream.getvalue()
    out, err = capsys.readouterr()
    assert out == "data on stdout\n" * 3 and err == ""


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 300), st.lists(st.integers(1, 7), max_size=60))
def test_console_plain_progress_never_exceeds_total(total, steps):
    stream = io.StringIO()
    with Console(stream=stream).progress(total) as advance:
        for n in steps:
            advance(n)
    lines = stream.getvalue().splitlines()
    assert len(lines) <= min(total, 10)
    assert all(int(line.split()[-1].split("/")[0]) <= total for line in lines)
