"""The prompt options from the CLI and JSONL: --embedding, --clip-skip, --no-prompt-syntax; their metadata (record,
A1111 `Clip skip` / `TI hashes`) and `ldm replay`; bad files and meaningless options refused with exit 2."""
from __future__ import annotations

import json

import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.io.png import parse_a1111

runner = CliRunner()


def ldm(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_embedding_and_clip_skip_recorded_and_replayed(tmp_path, sd1_file):
    emb = tmp_path / "sksdog.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "sksdog", "step": 1}, emb)
    r = ldm("txt2img", "a (sksdog:1.2), BREAK on a hill", "--ckpt", sd1_file, "--steps", 2, "--embedding", emb,
            "--clip-skip", 2, "-o", tmp_path / "a", "-q")
    assert r.exit_code == 0, r.stderr
    path = r.stdout.strip()
    info = Image.open(path).info
    record = json.loads(info["ldmcli"])
    assert record["clip_skip"] == 2 and record["embeddings"][0]["name"] == "sksdog"
    a1111 = parse_a1111(info["parameters"])
    assert a1111["Clip skip"] == "2" and a1111["TI hashes"] == f"sksdog: {record['embeddings'][0]['hash']}"
    again = ldm("replay", path, "-o", tmp_path / "b", "-q")
    assert again.exit_code == 0, again.stderr
    assert Image.open(again.stdout.strip()).tobytes() == Image.open(path).tobytes()
    plain = ldm("txt2img", "a (sksdog:1.2), BREAK on a hill", "--ckpt", sd1_file, "--steps", 2, "-o",
                tmp_path / "c", "-q")
    assert Image.open(plain.stdout.strip()).tobytes() != Image.open(path).tobytes()


def test_no_prompt_syntax_from_cli_and_jsonl(tmp_path, sd1_file):
    r1 = ldm("txt2img", "a (red) cat", "--ckpt", sd1_file, "--steps", 2, "--no-prompt-syntax", "-o",
             tmp_path / "a", "-q")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a (red) cat", "extra": {"no_prompt_syntax": True}}) + "\n"
                    + json.dumps({"prompt": "a (red) cat"}) + "\n")
    r2 = ldm("txt2img", "--from-file", jobs, "--ckpt", sd1_file, "--steps", 2, "-o", tmp_path / "b", "-q")
    assert r1.exit_code == r2.exit_code == 0, r2.stderr
    literal, jsonl_literal, weighted = r1.stdout.strip(), *r2.stdout.split()
    assert Image.open(literal).tobytes() == Image.open(jsonl_literal).tobytes()
    assert Image.open(literal).tobytes() != Image.open(weighted).tobytes()
    assert json.loads(Image.open(literal).info["ldmcli"])["extra"]["no_prompt_syntax"] is True


def test_refusals_exit_2(tmp_path, sd1_file):
    wide = tmp_path / "wide.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 1024)}}, wide)
    r = ldm("txt2img", "a wide", "--ckpt", sd1_file, "--steps", 2, "--embedding", wide, "-o", tmp_path, "-q")
    assert r.exit_code == 2 and "1024-d vectors" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    r = ldm("txt2img", "a", "--ckpt", sd1_file, "--embedding", bad, "-o", tmp_path, "-q")
    assert r.exit_code == 2 and "bad.pt" in r.stderr
    r = ldm("txt2img", "a", "--ckpt", sd1_file, "--clip-skip", 9, "-o", tmp_path, "-q")
    assert r.exit_code == 2 and "--clip-skip must lie in 1..2" in r.stderr
