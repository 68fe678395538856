"""Where a batch's images go, which of them are done, and the seed of each: the output half of the batch contract.

- Targets: `-o DIR` (default `outputs`), `-o NAME.png` for a run that makes one image, `-o -` for one PNG on
  stdout. Another image suffix (`.jpg`, `.webp`, ...) is refused: ldm writes PNG, the format that holds the
  generation record a rerun resumes from.
- Seeds: image k of job i gets `seed_i + k`, where `seed_i` is the job's own seed when it sets one, else
  `--seed` plus the number of images of the jobs before it. Every image of a batch thus gets its own seed, and the
  same image the same seed however the batch is sharded. `--seed -1` (or a job's `"seed": -1`) draws a random seed,
  which is recorded in the image.
- Done: an image is done when its file is a complete PNG (every chunk's CRC checked, through IEND) whose ldmcli
  record carries this job's fingerprint and seed. A rerun skips done images, regenerates missing and broken ones,
  and refuses (exit 2 for that job) to replace a complete image that holds another job or no ldm record at all,
  unless `--overwrite`.
- Collisions: two images of one batch that map to the same file are refused before the model loads.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ldmcli.errors import UsageError

SEED_LIMIT = 2**64                # torch.manual_seed accepts [0, 2**64)
RANDOM_SEED = -1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".jxl", ".heic"}

DONE, MISSING, BROKEN, OTHER = "done", "missing", "broken", "other"


def plan_target(out: str, n_images: int) -> Tuple[str, Optional[Path]]:
    """(mode, path): 'stdout' for -o -, 'file' for a single .png name, else 'dir'."""
    if out == "-":
        if n_images != 1:
            raise UsageError(f"-o - writes one PNG to stdout, but this run makes {n_images} images")
        return "stdout", None
    p = Path(out)
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        raise UsageError(f"-o {out}: ldm writes PNG images (lossless, with the generation record a rerun "
                         f"resumes from); name a .png file or a folder")
    if suffix == ".png":
        if n_images != 1:
            raise UsageError(f"-o {out} names one file, but this run makes {n_images} images; pass a directory")
        if p.is_dir():
            raise UsageError(f"-o {out} is a directory; name a file or drop the .png")
        return "file", p
    if p.exists() and not p.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    return "dir", p


def check_seed(seed: int, what: str = "--seed") -> int:
    if seed != RANDOM_SEED and not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{what} must be -1 (random) or between 0 and 2**64 - 1, got {seed}")
    return seed


def random_seed() -> int:
    """A fresh seed, in the range A1111 draws from (so it reads the same in its UI)."""
    return secrets.randbelow(2**32 - 1)


def first_seeds(jobs: Sequence, base_seed: int) -> List[int]:
    """The seed of image 0 of every job of a batch (the module docstring's rule); random seeds are drawn here,
    once per run."""
    base = random_seed() if check_seed(base_seed) == RANDOM_SEED else base_seed
    out, offset = [], 0
    for job in jobs:
        if job.seed is None:
            out.append((base + offset) % SEED_LIMIT)
        else:
            out.append(random_seed() if check_seed(job.seed, "a job's seed") == RANDOM_SEED else job.seed)
        offset += job.n_samples
    return out


def image_paths(mode: str, target: Optional[Path], jobs: Sequence, seeds: Sequence[int]) -> Dict[tuple, Path]:
    """{(job index, image index): path} of every image of the batch; a UsageError when two share a file."""
    from ldmcli.io.png import output_name
    paths: Dict[tuple, Path] = {}
    owner: Dict[str, tuple] = {}
    for i, (job, seed) in enumerate(zip(jobs, seeds)):
        for k in range(job.n_samples):
            if mode == "stdout":
                path = Path("-")
            elif mode == "file":
                path = target
            else:
                path = target / output_name(i, job.name, seed + k, k, tag=job.tag)
            key = str(path).casefold()     # a case-insensitive file system would merge these too
            if key in owner and mode != "stdout":
                (j, m) = owner[key]
                raise UsageError(f"job {i + 1} image {k + 1} and job {j + 1} image {m + 1} would both be written "
                                 f"to {path}; give the jobs different names (or seeds)")
            owner[key] = (i, k)
            paths[(i, k)] = path
    return paths


def image_state(path: Path, tag: str, seed: int) -> str:
    """DONE, MISSING, BROKEN (unreadable, truncated or corrupt: safe to replace) or OTHER (a complete image that is
    not this one: another job's, or not written by ldm)."""
    from PIL import Image
    if not path.exists() and not path.is_symlink():
        return MISSING
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                return OTHER
            img.verify()                        # reads every chunk to IEND, checking CRCs
        with Image.open(path) as img:
            text = img.info.get("ldmcli")
    except Exception:   # noqa: BLE001 - whatever Pillow raises on a broken file, the file is broken
        return BROKEN
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return OTHER
    if not isinstance(record, dict) or record.get("fingerprint") != tag or record.get("seed") != seed:
        return OTHER
    return DONE


def other_job_error(path: Path) -> UsageError:
    return UsageError(f"{path} exists with another job's image (or one not written by ldm); --overwrite to "
                      f"replace it")


__all__ = ["plan_target", "check_seed", "random_seed", "first_seeds", "image_paths", "image_state",
           "other_job_error", "DONE", "MISSING", "BROKEN", "OTHER", "SEED_LIMIT"]
