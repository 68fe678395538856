"""Textual-inversion embeddings (Gal et al. 2022): files of learned input vectors, each called by a token.

Formats, all read without running code: A1111 `.pt` (a pickle read with `torch.load(weights_only=True)`:
{"string_to_param": {"*": [n, width]}, "name", "step", ...}), A1111 `.safetensors` ({"emb_params": [n, width]}),
diffusers `learned_embeds.bin` / `.safetensors` ({token: [width] or [n, width]}). The token is the file's stem, as
in A1111 (diffusers' stored token name is not used: `--embedding` names the file). The hash is A1111's short hash:
the first 12 hex digits of the file's SHA-256.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Union

import torch

from ldmcli.errors import InputError, UsageError

SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass(frozen=True, eq=False)
class Embedding:
    name: str                  # the token that calls it: the file's stem
    vectors: torch.Tensor      # [n, width] float32
    hash: str                  # A1111 short hash (12 hex digits of the file's sha256)
    path: str

    @property
    def width(self) -> int:
        return self.vectors.shape[1]


def load_embedding(path: Union[str, Path]) -> Embedding:
    """One embedding file, or a one-line InputError (missing, unreadable, code in the pickle, unknown layout)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embedding not found: {path}")
    data = _read(path)
    vectors = _vectors(data, path)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[0] == 0 or not torch.isfinite(vectors).all():
        raise InputError(f"{path.name}: embedding vectors must be a finite [n, width] tensor, got "
                         f"{list(vectors.shape)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Embedding(path.stem, vectors.detach().float().clone(), digest[:12], str(path))


def embedding_files(files: Sequence[str] = (), folders: Sequence[str] = ()) -> List[Path]:
    """`--embedding FILE`s, then every .pt/.safetensors/.bin of each `--embedding-dir` (sorted by name)."""
    paths = [Path(f) for f in files]
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise InputError(f"--embedding-dir {folder}: not a folder")
        paths += sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())
    return paths


def load_embeddings(paths: Iterable[Union[str, Path]], load=None) -> List[Embedding]:
    """Every file's embedding (read by `load`, default `load_embedding`); two files with the same stem (the same
    token) are refused."""
    loaded: List[Embedding] = []
    for path in paths:
        emb = (load or load_embedding)(path)
        twin = next((e for e in loaded if e.name == emb.name), None)
        if twin is not None:
            raise InputError(f"two embeddings are called {emb.name!r}: {twin.path} and {emb.path}")
        loaded.append(emb)
    return loaded


def _read(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise InputError(f"cannot read embedding {path.name} as safetensors (truncated?): {_line(e)}") from None
    if not zipfile.is_zipfile(path):
        raise InputError(f"embedding {path.name} is neither safetensors nor a torch zip file (truncated, or a "
                         f"legacy pickle?)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"refusing to load embedding {path.name}: its pickle holds more than weights; only "
                         f"weights are loaded (weights_only), never code") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"cannot read embedding {path.name} (truncated or corrupt?): {_line(e)}") from None


def _vectors(data, path: Path) -> torch.Tensor:
    """The [n, width] (or [width]) tensor of one of the known layouts."""
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        params = [v for v in data["string_to_param"].values() if isinstance(v, torch.Tensor)]
        if len(params) == 1:
            return params[0]                                   # A1111 .pt
    if isinstance(data, dict) and isinstance(data.get("emb_params"), torch.Tensor):
        return data["emb_params"]                              # A1111 .safetensors
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if len(tensors) == 1 and len(data) == 1:
        return next(iter(tensors.values()))                    # diffusers {token: vectors}
    if isinstance(data, dict) and {"clip_l", "clip_g"} <= set(data):
        raise UsageError(f"{path.name} is an SDXL embedding (clip_l/clip_g); SDXL is not supported")
    keys = ", ".join(list(map(str, data))[:4]) if isinstance(data, dict) else type(data).__name__
    raise InputError(f"{path.name}: not a textual-inversion embedding (no string_to_param, emb_params or single "
                     f"token; holds {keys})")


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def check_width(embeddings: Sequence[Embedding], width: int, family: str) -> None:
    """Refuse, in one line, an embedding made for another text encoder (768-d SD1 on 1024-d SD2, ...)."""
    for emb in embeddings:
        if emb.width != width:
            raise UsageError(f"embedding {emb.name} ({Path(emb.path).name}) has {emb.width}-d vectors but "
                             f"{family}'s text encoder takes {width}-d (an embedding for another model family)")


__all__ = ["Embedding", "SUFFIXES", "check_width", "embedding_files", "load_embedding", "load_embeddings"]
