"""The output half of the batch contract: every image a run reports exists, is complete and is its job's; a rerun
finishes exactly the missing work; explicit names and collisions are refused before anything loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ldmcli.cli.runner as runner
from ldmcli.cli.app import app
from ldmcli.cli.outputs import BROKEN, DONE, MISSING, OTHER, image_state


def _run(*argv):
    return CliRunner().invoke(app, [str(a) for a in argv])


def _t2i(ckpt, out, *more, prompt="a red circle"):
    return _run("txt2img", prompt, "--ckpt", ckpt, "--steps", 2, "-o", out, *more)


def _pixels(path) -> bytes:
    from PIL import Image
    with Image.open(path) as img:
        return img.tobytes()


def _record(path):
    from ldmcli.io.png import read_metadata
    return read_metadata(path)["ldmcli"]


def test_explicit_file_of_another_job_is_refused(sd1_file, tmp_path):
    out = tmp_path / "same.png"
    assert _t2i(sd1_file, out).exit_code == 0
    first = out.read_bytes()
    again = _t2i(sd1_file, out)                              # the same job: resumed, nothing redone
    assert again.exit_code == 0 and out.read_bytes() == first
    other = _t2i(sd1_file, out, prompt="a blue square")
    assert other.exit_code == 2 and "exists with another job" in other.stderr and "--overwrite" in other.stderr
    assert out.read_bytes() == first and other.stdout == ""
    forced = _t2i(sd1_file, out, "--overwrite", prompt="a blue square")
    assert forced.exit_code == 0 and _record(out)["prompt"] == "a blue square"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_broken_finished_file_is_made_again(sd1_file, tmp_path, damage):
    out = tmp_path / "out"
    path = Path(_t2i(sd1_file, out).stdout.split()[0])
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncate" else good[:60] + bytes([good[60] ^ 1]) + good[61:])
    assert image_state(path, _record_tag(good), 0) == BROKEN
    r = _t2i(sd1_file, out)
    assert r.exit_code == 0 and r.stdout.split() == [str(path)] and path.read_bytes() == good


def _record_tag(png: bytes) -> str:
    import io
    from PIL import Image
    return json.loads(Image.open(io.BytesIO(png)).info["ldmcli"])["fingerprint"]


def test_named_job_rerun_after_its_prompt_changed_is_not_done(sd1_file, tmp_path):
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    jobs.write_text('{"prompt": "a red circle", "name": "cat"}\n')
    first = _run("txt2img", "--ckpt", sd1_file, "--steps", 2, "-o", out, "--from-file", jobs)
    assert first.exit_code == 0
    jobs.write_text('{"prompt": "a blue square", "name": "cat"}\n')
    r = _run("txt2img", "--ckpt", sd1_file, "--steps", 2, "-o", out, "--from-file", jobs)
    assert r.exit_code == 2 and "exists with another job" in r.stderr and r.stdout == ""


def test_collisions_are_refused_before_the_model_loads(sd1_file, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_model", lambda *a: pytest.fail("the model was loaded"))
    jobs = tmp_path / "jobs.jsonl"
    for lines in (['{"prompt": "a", "name": "x", "seed": 1}', '{"prompt": "b", "name": "x", "seed": 1}'],
                  ['{"prompt": "a", "name": "a b", "seed": 1}', '{"prompt": "b", "name": "a/b", "seed": 1}']):
        jobs.write_text("\n".join(lines) + "\n")
        r = _run("txt2img", "--ckpt", sd1_file, "-o", tmp_path / "out", "--from-file", jobs)
        assert r.exit_code == 2 and "would both be written to" in r.stderr


def test_seeds_do_not_overlap_between_jobs(sd1_file, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red circle\na blue square\n")
    r = _run("txt2img", "--ckpt", sd1_file, "--steps", 1, "-n", 2, "--seed", 10, "-o", tmp_path / "out",
             "--from-file", jobs, "--json")
    seeds = [json.loads(line)["seed"] for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and seeds == [10, 11, 12, 13]


def test_random_seed_is_drawn_and_recorded(sd1_file, tmp_path):
    a = _t2i(sd1_file, tmp_path / "a", "--seed", -1, "--json")
    b = _t2i(sd1_file, tmp_path / "b", "--seed", -1, "--json")
    sa, sb = json.loads(a.stdout)["seed"], json.loads(b.stdout)["seed"]
    assert a.exit_code == b.exit_code == 0 and sa != sb and sa != 2**64 - 1
    assert _record(json.loads(a.stdout)["path"])["seed"] == sa


@pytest.mark.parametrize("name", ["out.jpg", "out.JPEG", "out.webp"])
def test_other_image_formats_are_refused_without_creating_anything(sd1_file, tmp_path, name):
    r = _t2i(sd1_file, tmp_path / name)
    assert r.exit_code == 2 and "ldm writes PNG" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_replay_finds_relative_inputs_from_anywhere(tmp_path, monkeypatch, tiny_ckpt):
    """An inpaint made from relative paths in one folder replays from another."""
    import numpy as np
    from PIL import Image
    from tiny import SD1_TINY
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(work / "img.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(work / "mask.png")
    ckpt = tiny_ckpt(SD1_TINY, 5, name="blend-sd1")
    monkeypatch.chdir(work)
    r = _run("inpaint", "img.png", "a cat", "--mask", "mask.png", "--ckpt", ckpt, "--steps", 2, "-o", "out")
    assert r.exit_code == 0, r.stderr
    made = Path(r.stdout.split()[0]).resolve()
    monkeypatch.chdir(elsewhere)
    again = _run("replay", made, "-o", "replayed")
    assert again.exit_code == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(again.stdout.split()[0])), np.asarray(Image.open(made)))


def test_image_state_of_foreign_and_missing_files(tmp_path):
    from PIL import Image
    assert image_state(tmp_path / "none.png", "abc", 0) == MISSING
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert image_state(tmp_path / "plain.png", "abc", 0) == OTHER
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    assert image_state(tmp_path / "junk.png", "abc", 0) == BROKEN
    assert DONE == "done"


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path):
    import os
    from PIL import Image
    from ldmcli.io.atomic import temp_name
    from ldmcli.io.png import write_png_atomic
    victim = tmp_path / "outside.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, temp_name(out / "img.png"))
    write_png_atomic(Image.new("RGB", (4, 4)), out / "img.png")
    assert victim.read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["img.png"]


def test_stale_temporary_files_of_dead_writers_are_cleared(sd1_file, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".00000-abc-s0-0.png.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"half a png")
    (out / "notes.tmp-x").write_text("not ours")
    assert _t2i(sd1_file, out).exit_code == 0
    assert not stale.exists() and (out / "notes.tmp-x").exists()


def test_a1111_sampler_names_and_schedules_through_the_cli(sd1_file, tmp_path):
    """`--sampler "DPM++ 2M Karras"` is dpmpp_2m on the karras schedule: recorded, written the A1111 way, replayed;
    a job file may set the schedule per job."""
    from ldmcli.io.png import read_metadata
    r = _t2i(sd1_file, tmp_path / "a.png", "--sampler", "DPM++ 2M Karras")
    assert r.exit_code == 0, r.stderr
    meta = read_metadata(tmp_path / "a.png")
    assert (meta["ldmcli"]["sampler"], meta["ldmcli"]["schedule"]) == ("dpmpp_2m", "karras")
    assert meta["parameters"]["Sampler"] == "DPM++ 2M" and meta["parameters"]["Schedule type"] == "Karras"
    assert _t2i(sd1_file, tmp_path / "b.png", "--sampler", "dpmpp_2m", "--schedule", "karras").exit_code == 0
    assert _pixels(tmp_path / "a.png") == _pixels(tmp_path / "b.png")
    assert _t2i(sd1_file, tmp_path / "e.png", "--sampler", "dpmpp_2m").exit_code == 0
    assert _pixels(tmp_path / "a.png") != _pixels(tmp_path / "e.png")
    again = _run("replay", tmp_path / "a.png", "-o", tmp_path / "c.png")
    assert again.exit_code == 0 and _pixels(tmp_path / "c.png") == _pixels(tmp_path / "a.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a", "sampler": "Euler a", "schedule": "exponential", "seed": 3}\n')
    r = _run("txt2img", "--ckpt", sd1_file, "--steps", 2, "-o", tmp_path / "out", "--from-file", jobs, "--json")
    assert r.exit_code == 0, r.stderr
    rec = read_metadata(json.loads(r.stdout)["path"])["ldmcli"]
    assert (rec["sampler"], rec["schedule"]) == ("euler_a", "exponential")
    assert _t2i(sd1_file, tmp_path / "d.png", "--schedule", "nonsense").exit_code == 2
    jobs.write_text('{"prompt": "a", "schedule": "nonsense"}\n')
    r = _run("txt2img", "--ckpt", sd1_file, "-o", tmp_path / "out2", "--from-file", jobs)
    assert r.exit_code == 2 and "unknown schedule 'nonsense'" in r.stderr
