"""Clip skip, embeddings and a VAE per job of a --from-file batch (`extra`: clip_skip, embeddings, embedding_dir,
vae): a job's own value over the command line's, the same pixels as separate runs, each image's record and A1111
fields its own job's, `ldm replay` of every image, bad values refused before the model loads."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.io.png import parse_a1111
from ldmcli.loading.checkpoint import save_safetensors
from tiny import SD1_TINY, compvis_state_dict, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a sksdog on a hill"


def ldm(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def pixels(path) -> bytes:
    return Image.open(path).tobytes()


def record(path) -> dict:
    return json.loads(Image.open(path).info["ldmcli"])


def a1111(path) -> dict:
    return parse_a1111(Image.open(path).info["parameters"])


def write_jobs(path, jobs):
    path.write_text("\n".join(json.dumps({"prompt": PROMPT, "seed": 5, **j}) for j in jobs) + "\n")
    return path


def write_vae(path, seed):
    sd = {k[len("first_stage_model."):]: v for k, v in compvis_state_dict(tiny_model(SD1_TINY, seed)).items()
          if k.startswith("first_stage_model.")}
    save_safetensors(sd, path)
    return path


@pytest.fixture
def common(sd1_file):
    return ("--ckpt", sd1_file, "--steps", 2, "--seed", 5, "-q", "--dtype", "float32")


@pytest.fixture
def emb(tmp_path):
    path = tmp_path / "sksdog.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))}}, path)
    return path


def run(*args):
    r = ldm(*args)
    assert r.exit_code == 0, r.stderr
    return r.stdout.split()


def test_a_batch_reads_each_embedding_file_once(tmp_path, common, emb, monkeypatch):
    """The run's --embedding is read before the model loads and again for each job's prompt setup: through one
    cache, so the file is read once (a folder naming the same file again adds nothing)."""
    from ldmcli.cli import addons
    from ldmcli.prompts import embeddings
    reads = []
    real = embeddings.load_embedding
    monkeypatch.setattr(embeddings, "load_embedding", lambda path: reads.append(str(path)) or real(path))
    addons._read_embedding.cache_clear()
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{}, {"seed": 6}, {"extra": {"clip_skip": 2}}])
    run("txt2img", "--from-file", jobs, "--embedding", emb, "--embedding-dir", tmp_path, "-o", tmp_path / "b",
        *common)
    assert reads == [str(emb)]


def test_clip_skip_and_embeddings_per_job_equal_separate_runs(tmp_path, common, emb, monkeypatch):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{}, {"extra": {"clip_skip": 2}}, {"extra": {"embeddings": [
        "sksdog.pt"]}}, {}, {"extra": {"embedding_dir": "."}}])   # relative: to the job file's folder
    monkeypatch.chdir(tmp_path.parent)
    batch = run("txt2img", "--from-file", jobs, "-o", tmp_path / "batch", *common)
    plain, = run("txt2img", PROMPT, "-o", tmp_path / "plain", *common)
    skip, = run("txt2img", PROMPT, "--clip-skip", 2, "-o", tmp_path / "skip", *common)
    with_emb, = run("txt2img", PROMPT, "--embedding", emb, "-o", tmp_path / "emb", *common)
    assert len(batch) == 5 and len({pixels(plain), pixels(skip), pixels(with_emb)}) == 3
    assert pixels(batch[0]) == pixels(batch[3]) == pixels(plain)
    assert pixels(batch[1]) == pixels(skip)
    assert pixels(batch[2]) == pixels(batch[4]) == pixels(with_emb)
    # each image's record and A1111 fields are its own job's
    assert record(batch[0])["clip_skip"] is None and "Clip skip" not in a1111(batch[0])
    assert record(batch[1])["clip_skip"] == 2 and a1111(batch[1])["Clip skip"] == "2"
    rec = record(batch[2])
    assert rec["embedding_paths"] == [str(emb.resolve())] and rec["extra"]["embeddings"] == [str(emb)]
    assert a1111(batch[2])["TI hashes"] == rec["ti_hashes"] == f"sksdog: {rec['embeddings'][0]['hash']}"
    assert "TI hashes" not in a1111(batch[3])
    for k in (1, 2, 3, 4):
        again, = run("replay", batch[k], "-o", tmp_path / f"r{k}", "-q", "--dtype", "float32")
        assert pixels(again) == pixels(batch[k]), k


def test_job_values_override_the_command_line(tmp_path, common, emb):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{}, {"extra": {"clip_skip": 1}}, {"extra": {"embeddings": []}}])
    batch = run("txt2img", "--from-file", jobs, "--clip-skip", 2, "--embedding", emb, "-o", tmp_path / "b", *common)
    both, = run("txt2img", PROMPT, "--clip-skip", 2, "--embedding", emb, "-o", tmp_path / "both", *common)
    last, = run("txt2img", PROMPT, "--clip-skip", 1, "--embedding", emb, "-o", tmp_path / "last", *common)
    no_emb, = run("txt2img", PROMPT, "--clip-skip", 2, "-o", tmp_path / "none", *common)
    assert pixels(batch[0]) == pixels(both)
    assert pixels(batch[1]) == pixels(last) != pixels(both)
    assert pixels(batch[2]) == pixels(no_emb) != pixels(both)
    assert record(batch[1])["clip_skip"] == 1 and record(batch[2])["embeddings"] is None
    again, = run("replay", batch[2], "-o", tmp_path / "r", "-q", "--dtype", "float32")     # [] in its extra: still none
    assert pixels(again) == pixels(batch[2])


def test_vae_per_job_swapped_and_restored_bit_exactly(tmp_path, common):
    a, b = write_vae(tmp_path / "a-vae.safetensors", 8), write_vae(tmp_path / "b-vae.safetensors", 9)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{}, {"extra": {"vae": ""}}, {"extra": {"vae": "b-vae.safetensors"}},
                                                {}, {"extra": {"vae": ""}}])
    batch = run("txt2img", "--from-file", jobs, "--vae", a, "-o", tmp_path / "batch", *common)
    with_a, = run("txt2img", PROMPT, "--vae", a, "-o", tmp_path / "a", *common)
    own, = run("txt2img", PROMPT, "-o", tmp_path / "own", *common)
    with_b, = run("txt2img", PROMPT, "--vae", b, "-o", tmp_path / "b", *common)
    assert len({pixels(with_a), pixels(own), pixels(with_b)}) == 3
    assert pixels(batch[0]) == pixels(batch[3]) == pixels(with_a)
    assert pixels(batch[1]) == pixels(batch[4]) == pixels(own)
    assert pixels(batch[2]) == pixels(with_b)
    assert record(batch[1])["vae"] is None and "VAE" not in a1111(batch[1])
    rec = record(batch[2])
    assert rec["vae"] == "b-vae.safetensors" and rec["vae_path"] == str(b.resolve())
    assert a1111(batch[2])["VAE"] == "b-vae.safetensors" and a1111(batch[2])["VAE hash"] == rec["vae_hash"]
    assert a1111(batch[0])["VAE"] == "a-vae.safetensors"
    for k in (1, 2):
        again, = run("replay", batch[k], "-o", tmp_path / f"r{k}", "-q", "--dtype", "float32")
        assert pixels(again) == pixels(batch[k]), k


@pytest.mark.parametrize("extra, says", [
    ({"clip_skip": 0}, "--clip-skip must be at least 1"),
    ({"clip_skip": "2"}, "option 'clip_skip' should be int"),
    ({"vae": "missing.safetensors"}, "VAE file not found"),
    ({"embeddings": ["missing.pt"]}, "embedding not found"),
    ({"embeddings": [3]}, "should be a list of files"),
    ({"embedding_dir": "nowhere"}, "not a folder"),
    ({"embeddings": ["bad.pt"]}, "bad.pt"),
])
def test_bad_job_values_refused_before_the_model_loads(tmp_path, extra, says):
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"extra": extra}])
    # no such checkpoint: a job refused before loading never gets to read it
    r = ldm("txt2img", "--from-file", jobs, "--ckpt", tmp_path / "none.ckpt", "-o", tmp_path / "o", "-q")
    assert r.exit_code == 2 and says in r.stderr, r.stderr
    assert "none.ckpt" not in r.stderr and not os.path.exists(tmp_path / "o")
