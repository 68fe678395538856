"""Batch job files (ldmcli.cli.jobs): formats, errors with line numbers, paths, sharding, seeds, fuzzing."""
import dataclasses
import io
import json
import os
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ldmcli.cli import jobs
from ldmcli.errors import InputError, UsageError
from ldmcli.cli.jobs import Job, read_jobs, shard
from ldmcli.cli.outputs import first_seeds


def write(tmp_path, text, name="jobs.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_job_field_is_checked():
    assert set(jobs._CHECKS) == {f.name for f in dataclasses.fields(Job)} - {"tag"}   # tag: set by the runner


def test_plain_text(tmp_path):
    path = write(tmp_path, "# my prompts\n\na red fox\n   \n  an owl at night  \n#skipped\n")
    got = read_jobs(path, {"steps": 20, "scale": None})
    assert [j.prompt for j in got] == ["a red fox", "an owl at night"]
    assert all(j.steps == 20 and j.scale is None and j.n_samples == 1 for j in got)


def test_jsonl(tmp_path):
    lines = ['# comment first', '{"prompt": "a cat", "seed": 3, "scale": 5, "extra": {"eta": 1.0}}', "",
             '{"prompt": "a dog", "negative_prompt": "blurry", "n_samples": 2, "seed": null}']
    got = read_jobs(write(tmp_path, "\n".join(lines), "jobs.jsonl"), {"steps": 30, "extra": {"strength": 0.5}})
    assert got[0] == Job(prompt="a cat", seed=3, scale=5.0, steps=30, extra={"strength": 0.5, "eta": 1.0})
    assert got[1] == Job(prompt="a dog", negative_prompt="blurry", n_samples=2, steps=30,
                         extra={"strength": 0.5})
    assert got[0].extra is not got[1].extra


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"prompt": "from a pipe"}\n')))
    assert read_jobs("-", {}) == [Job(prompt="from a pipe")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    assert [j.prompt for j in read_jobs("-", {})] == ["one", "two"]


def test_malformed_json_names_the_line(tmp_path):
    path = write(tmp_path, '{"prompt": "ok"}\n\n{"prompt": "missing brace"\n', "j.jsonl")
    with pytest.raises(InputError, match=r"j\.jsonl:3: invalid JSON"):
        read_jobs(path, {})


def test_non_object_line(tmp_path):
    with pytest.raises(InputError, match=r":2: expected a JSON object"):
        read_jobs(write(tmp_path, '{"prompt": "a"}\n["b"]\n'), {})


def test_unknown_key_names_key_and_line(tmp_path):
    path = write(tmp_path, '{"prompt": "a"}\n{"promt": "b"}\n')
    with pytest.raises(InputError, match=r"jobs\.txt:2: unknown key 'promt' \(did you mean 'prompt'\?\)"):
        read_jobs(path, {})


@pytest.mark.parametrize("line, message", [
    ('{"steps": "50"}', "'steps' should be an integer, got a string"),
    ('{"steps": 12.5}', "'steps' should be an integer, got a number"),
    ('{"seed": true}', "'seed' should be an integer, got a boolean"),
    ('{"seed": -2}', "'seed' must be >= 0"),   # -1 means random
    ('{"n_samples": 0}', "'n_samples' must be >= 1"),
    ('{"scale": "7"}', "'scale' should be a number, got a string"),
    ('{"scale": NaN}', "'scale' must be finite"),
    ('{"prompt": 5}', "'prompt' should be a string, got a number"),
    ('{"image": ""}', "'image' is an empty path"),
    ('{"extra": [1]}', "'extra' should be an object"),
])
def test_wrong_types_name_the_line(tmp_path, line, message):
    with pytest.raises(InputError, match=r"jobs\.txt:2: " + message.replace("(", r"\(")):
        read_jobs(write(tmp_path, '{"prompt": "fine"}\n' + line + "\n"), {})


def test_relative_paths_resolved_against_job_file(tmp_path, monkeypatch):
    sub = tmp_path / "batch"
    sub.mkdir()
    write(sub, json.dumps({"image": "in/a.png", "mask": "/abs/m.png", "segmap": "~/s.png"}))
    monkeypatch.chdir(tmp_path)
    (job,) = read_jobs(os.path.join("batch", "jobs.txt"), {"layout": "cwd-relative.json"})
    assert job.image == str(sub / "in" / "a.png")
    assert job.mask == "/abs/m.png"
    assert job.segmap == os.path.join(os.path.expanduser("~"), "s.png")
    assert job.layout == "cwd-relative.json"  # defaults come from the command line: not re-rooted
    write(sub, json.dumps({"image": "~nosuchuserxyz/a.png"}))  # no such home: kept as written, then re-rooted
    (job,) = read_jobs(os.path.join("batch", "jobs.txt"), {})
    assert job.image == str(sub / "~nosuchuserxyz" / "a.png")


def test_stdin_paths_stay_relative_to_cwd(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"image": "a.png"}'))
    assert read_jobs("-", {})[0].image == "a.png"


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(InputError, match="no_such.txt"):
        read_jobs(tmp_path / "no_such.txt", {})
    with pytest.raises(InputError, match="job file"):
        read_jobs(tmp_path, {})
    with pytest.raises(InputError, match="no jobs"):
        read_jobs(write(tmp_path, "# nothing\n\n"), {})
    (tmp_path / "bin").write_bytes(b"ok\n\xff\xfe\x00")
    with pytest.raises(InputError, match=r"bin:2: not UTF-8"):
        read_jobs(tmp_path / "bin", {})
    (tmp_path / "nul").write_bytes(b"a\nb\nc\x00\n")
    with pytest.raises(InputError, match=r"nul:3: NUL byte"):
        read_jobs(tmp_path / "nul", {})


def test_bad_defaults_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="stepz"):
        read_jobs(write(tmp_path, "a\n"), {"stepz": 3})


def test_shard_union_is_all_with_global_indices():
    batch = [Job(prompt=str(i)) for i in range(11)]
    parts = [shard(batch, rank, 3) for rank in range(3)]
    assert sorted(i for part in parts for i, _ in part) == list(range(11))
    assert all(job is batch[i] for part in parts for i, job in part)
    assert [i for i, _ in parts[1]] == [1, 4, 7, 10]
    assert shard(batch, 0, 1) == list(enumerate(batch))
    for rank, world in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(UsageError):
            shard(batch, rank, world)


def test_every_image_of_a_batch_gets_its_own_seed():
    """Image k of job i: the job's own seed + k, else --seed + the images of the jobs before it + k."""
    batch = [Job(n_samples=2), Job(n_samples=3), Job(seed=7, n_samples=2), Job()]
    assert first_seeds(batch, 100) == [100, 102, 7, 107]
    seeds = [s + k for job, s in zip(batch, first_seeds(batch, 100)) if job.seed is None for k in range(job.n_samples)]
    assert len(seeds) == len(set(seeds))
    assert first_seeds([Job(), Job()], 2**64 - 1) == [2**64 - 1, 0]


def test_seed_minus_one_draws_a_random_seed():
    a, b = first_seeds([Job()], -1), first_seeds([Job()], -1)
    assert a != b and 0 <= a[0] < 2**32      # two runs: two draws (equal with probability 2**-32)
    with pytest.raises(UsageError, match="-1 \\(random\\) or between 0"):
        first_seeds([Job()], -2)


# ---- fuzzing: a job file can fail only with an InputError ----

def _read_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "jobs.txt")
        with open(path, "wb") as f:
            f.write(data)
        try:
            got = read_jobs(path, {"steps": 10})
        except InputError:
            return
        assert got and all(isinstance(job, Job) for job in got)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes(data):
    _read_bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_text(text):
    _read_bytes(text.encode("utf-8", "surrogatepass"))


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                            lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
_keys = st.sampled_from(sorted(jobs._CHECKS) + ["promt", "", "extra "]) | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(_keys, _json_values, max_size=6), min_size=1, max_size=4))
def test_fuzz_jsonl(objects):
    _read_bytes("\n".join(json.dumps(obj) for obj in objects).encode())


def test_fingerprint_follows_what_decides_the_pixels():
    base = jobs.fingerprint("txt2img", Job(prompt="a red circle"), {"ckpt": "m.safetensors", "out": "a"})
    assert len(base) == 6 and all(c in "0123456789abcdef" for c in base)
    same = [jobs.fingerprint("txt2img", Job(prompt="a red circle", seed=9, name="x", n_samples=4),
                             {"ckpt": "m.safetensors", "out": "b", "quiet": True, "json": True, "device": "cpu"})]
    assert same == [base]                           # seed/samples/name are in the file name; output options no
    for other in (jobs.fingerprint("txt2img", Job(prompt="a blue circle"), {"ckpt": "m.safetensors"}),
                  jobs.fingerprint("txt2img", Job(prompt="a red circle", steps=3), {"ckpt": "m.safetensors"}),
                  jobs.fingerprint("txt2img", Job(prompt="a red circle"), {"ckpt": "n.safetensors"}),
                  jobs.fingerprint("inpaint", Job(prompt="a red circle"), {"ckpt": "m.safetensors"})):
        assert other != base
