"""A job's own add-ons: clip skip, textual-inversion embeddings and a VAE, over the run's command-line values.

A job of a --from-file batch may set in its `extra` `clip_skip` (a whole number), `embeddings` (a list of files),
`embedding_dir` (a folder) and `vae` (a file; "" for the checkpoint's own first stage); each one it leaves unset
comes from --clip-skip, --embedding, --embedding-dir, --vae. Before each job the text encoder's PromptSetup is set
anew (cheap: the embeddings are read once per file) and the first stage swapped when the job's VAE differs from the
last one's (loading/vae.py `use_vae` keeps the checkpoint's own tensors and restores them bit-exactly), so a batch
mixing jobs with and without them gives the images of separate runs.
"""
from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional, Tuple



class Addons(NamedTuple):
    clip_skip: Optional[int]
    embeddings: Tuple[str, ...]     # absolute paths
    embedding_dir: Optional[str]    # absolute
    vae: Optional[str]              # absolute; None: the checkpoint's own first stage


def _own(job, name: str):
    """The job's own value of option `name` (typed, or UsageError); None when it sets none."""
    from ldmcli.cli.inputs import job_option
    return job_option(job, name) if job.extra.get(name) is not None else None


def _absolute(path) -> Optional[str]:
    from ldmcli.io.paths import expand_user
    return os.path.abspath(expand_user(path)) if path else None


def run_addons(opts: dict) -> Addons:
    """The run's own: --clip-skip, --embedding, --embedding-dir, --vae (its embeddings go through the jobs' per-file
    cache too, so a batch reads each file once)."""
    return Addons(opts.get("clip_skip"), tuple(_absolute(f) for f in opts.get("embedding") or ()),
                  _absolute(opts.get("embedding_dir")), _absolute(opts.get("vae")))


def job_addons(job, opts: dict) -> Addons:
    """The job's clip skip, embedding files and folder, and VAE: its own where it sets them, else the run's."""
    run = run_addons(opts)
    clip_skip, files, folder, vae = (_own(job, n) for n in ("clip_skip", "embeddings", "embedding_dir", "vae"))
    return Addons(clip_skip if clip_skip is not None else run.clip_skip,
                  tuple(_absolute(f) for f in files) if files is not None else run.embeddings,
                  _absolute(folder) if folder is not None else run.embedding_dir,
                  _absolute(vae) if vae is not None else run.vae)


@lru_cache(maxsize=64)
def _read_embedding(path: str, mtime_ns: int, size: int):
    from ldmcli.prompts.embeddings import load_embedding
    return load_embedding(path)


def _cached_embedding(path: str):
    """An embedding file read once per run and job (keyed by its stat, so a changed file is read again)."""
    from ldmcli.prompts.embeddings import load_embedding
    if not os.path.isfile(path):
        return load_embedding(path)     # its one-line "not found"
    st = os.stat(path)
    return _read_embedding(path, st.st_mtime_ns, st.st_size)


def embeddings_of(addons: Addons) -> list:
    """The Embeddings of the files and of the folder (a file named twice is read once); two tokens alike are an
    InputError."""
    from ldmcli.prompts.embeddings import embedding_files, load_embeddings
    paths = embedding_files(addons.embeddings, [addons.embedding_dir] if addons.embedding_dir else ())
    return load_embeddings(dict.fromkeys(str(Path(p).resolve()) for p in paths), load=_cached_embedding)


def check_job_addons(job, opts: dict) -> None:
    """Before the model loads: a job that sets its own embeddings has them read (bad files refused); the run's
    own are read when the model loads (runner.load_model), the files' existence is validate.py's."""
    if job.extra.get("embeddings") is not None or job.extra.get("embedding_dir") is not None:
        embeddings_of(job_addons(job, opts))


def apply_job_addons(model, loaded, job, opts: dict):
    """Set the job's clip skip and embeddings on the text encoder and swap in its VAE; the LoadRecord for the
    job's image record (its `vae`, the job's)."""
    from ldmcli.loading.vae import use_vae
    from ldmcli.prompts import configure
    addons = job_addons(job, opts)
    configure(model, embeddings=embeddings_of(addons), clip_skip=addons.clip_skip)
    use_vae(model, addons.vae)
    return dataclasses.replace(loaded, vae=addons.vae or "")


__all__ = ["Addons", "apply_job_addons", "check_job_addons", "embeddings_of", "job_addons", "run_addons"]
