"""Training data: an in-memory pool of examples from the shapes world or from a folder of captioned images.

A pool is rendered (world) or loaded (folder) once, before training, as uint8/int64 tensors, so a training step
only indexes it. Which examples a step sees is a pure function of (seed, rank, step): each epoch is a seeded
permutation of the process's shard, so a resumed run sees exactly the batches an uninterrupted one would.
Under torchrun every process holds only its shard (example i belongs to rank i mod world size).

World examples come from `ldmcli.world.render.example` on the "train" split; the ×4 pair's low-res image is the
exact render at a quarter of the size (not a resize). Folder examples: every image (centre-cropped to a square,
resized with Pillow's antialiasing bicubic filter) with the caption in `<stem>.txt` beside it ("" if none);
the low-res image is a bicubic ÷4 resize of that.
Dead-leaves examples (`leaves_pool`, world/deadleaves.py) have the caption "" (the unconditional prompt), no object
to mask, and as the folder's the bicubic ÷4 resize as low-res image: the degradation of a resized photograph.
"""
from __future__ import annotations

import hashlib
import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ldmcli.errors import UsageError
from ldmcli.train.recipes import LAYOUT_LENGTH, LAYOUT_VOCAB, WORLD_LABELS
from ldmcli.tokenizers.words import build_vocab

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# which pool fields each stage reads ("image" always)
TASK_FIELDS = {"autoencoder": (), "txt2img": ("caption",), "inpaint": ("caption", "object_mask"),
               "superres": ("lowres",), "layout2img": ("layout",), "semantic2img": ("class_map",)}
WORLD_ONLY = ("layout", "class_map")


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (BLAKE2b): independent streams per (seed, step, rank, purpose)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---- layout2img tokens (MODELS.md §6.4, built by ldmcli.io.layout as the layout2img task builds them) -----------
def world_layout_tokens(boxes: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The 92 tokens of a world layout: boxes (k, 4) in 0-1, labels "red circle" → their WORLD_LABELS index."""
    from ldmcli.io.layout import layout_tokens
    objects = [(WORLD_LABELS.index(label), tuple(float(v) for v in box))
               for box, label in zip(np.asarray(boxes).reshape(-1, 4), labels)]
    return np.array(layout_tokens(objects, LAYOUT_VOCAB, LAYOUT_LENGTH), np.int64)


def unconditional_layout() -> np.ndarray:
    """The empty layout (all padding, crop tokens kept): the unconditional input for guidance (§6.4)."""
    from ldmcli.io.layout import unconditional_tokens
    return np.array(unconditional_tokens(LAYOUT_VOCAB, LAYOUT_LENGTH), np.int64)


# ---- pools -----------------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """n examples as tensors: image uint8 [n, 3, H, W] and, as a stage needs them, lowres [n, 3, H/4, W/4],
    layout int64 [n, 92], class_map uint8 [n, H, W], object_mask uint8 [n, H, W]; captions beside them.

    Caption variants: captions may hold k·n entries, caption i belonging to image i mod n; the pool then has k·n
    examples (each image with each of its captions) without storing an image twice, and a tensor with one row per
    caption (the tokens) is indexed by example, every other by image."""
    tensors: Dict[str, torch.Tensor]
    captions: List[str] = field(default_factory=list)
    world_images: int = 0      # with dead leaves joined after the world (join_pools): the world's images; 0: all

    @property
    def world_examples(self) -> int:
        """How many examples are world scenes (each image with each of its captions)."""
        if not self.world_images:
            return len(self)
        return max(1, len(self.captions) // max(self.n_images, 1)) * self.world_images

    def world_index(self, indices: torch.Tensor) -> torch.Tensor:
        """Pool indices of the world examples `indices` (0 … world_examples − 1, numbered as in a pool of the world
        alone): caption variant v of world image j is example v·n_images + j of the joined pool."""
        if not self.world_images:
            return indices
        return indices // self.world_images * self.n_images + indices % self.world_images

    @property
    def n_images(self) -> int:
        return self.tensors["image"].shape[0]

    def __len__(self) -> int:
        return max(self.n_images, len(self.captions))

    def batch(self, indices: torch.Tensor, device) -> Dict[str, torch.Tensor]:
        """The examples at `indices`, on `device`; images (image, lowres) as float in [-1, 1]."""
        out, images = {}, indices % self.n_images
        for name, t in self.tensors.items():
            v = t[indices if t.shape[0] == len(self) else images].to(device, non_blocking=True)
            out[name] = v.float() / 127.5 - 1 if name in ("image", "lowres") else v
        return out


def _image_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), np.uint8).transpose(2, 0, 1)   # [H, W, 3] -> [3, H, W]


def _world_record(scene_seed: int, size: int, fields: Tuple[str, ...]) -> dict:
    from ldmcli.world import render
    ex = render.example(scene_seed, size, extras=("inpaint",) if "object_mask" in fields else ())
    rec = {"image": _image_array(ex["image"]), "caption": ex["caption"]}
    if "lowres" in fields:
        rec["lowres"] = _image_array(render.render(ex["scene"], size // 4))
    if "layout" in fields:
        rec["layout"] = world_layout_tokens(ex["boxes"], ex["labels"])
    if "class_map" in fields:
        rec["class_map"] = ex["class_map"]
    if "object_mask" in fields:
        rec["object_mask"] = ex["mask_object"]
    return rec


def _world_chunk(args) -> List[dict]:
    seeds, size, fields = args
    return [_world_record(s, size, fields) for s in seeds]


def _stack(records: List[dict], fields: Tuple[str, ...]) -> Pool:
    names = ("image",) + tuple(f for f in fields if f != "caption")
    tensors = {name: torch.from_numpy(np.stack([r[name] for r in records])) for name in names}
    return Pool(tensors, [r["caption"] for r in records])


def _caption_variants(seeds: Sequence[int], k: int) -> List[str]:
    """Captions 1..k-1 of each scene (caption 0 is its example's): the attribute dropout drawn again per variant."""
    from ldmcli.world.render import CAPTION_DROP
    from ldmcli.world.scenes import caption, scene_from_seed
    return [caption(scene_from_seed(s), np.random.default_rng([s, 2, v]), CAPTION_DROP)
            for v in range(1, k) for s in seeds]


def _records(chunk_fn, items: list, size: int, fields: Tuple[str, ...], workers: int) -> List[dict]:
    """chunk_fn over chunks of 256 items, in `workers` forked processes when there are two chunks or more; the
    records in the items' order. Rendering is pure numpy/PIL, so forked workers never touch torch's thread pools;
    "fork" (not spawn) also works when the caller's main module has no `if __name__ == "__main__"` guard."""
    chunks = [(items[i:i + 256], size, fields) for i in range(0, len(items), 256)]
    if workers <= 1 or len(chunks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [r for chunk in chunks for r in chunk_fn(chunk)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as executor:
        return [r for chunk in executor.map(chunk_fn, chunks) for r in chunk]


def _picture_record(img: Image.Image, caption: str, size: int, fields: Tuple[str, ...]) -> dict:
    """A folder or dead-leaves example: the low-res image a bicubic ÷4 resize, no objects to mask (random boxes
    only, see ldm_stage)."""
    rec = {"image": _image_array(img), "caption": caption}
    if "lowres" in fields:
        rec["lowres"] = _image_array(img.resize((size // 4, size // 4), Image.Resampling.BICUBIC))
    if "object_mask" in fields:
        rec["object_mask"] = np.zeros((size, size), np.uint8)
    return rec


def world_pool(size: int, n: int, seed: int, fields: Sequence[str] = (), rank: int = 0, world: int = 1,
               workers: int = 1, caption_variants: int = 1) -> Pool:
    """This process's shard of the first n "train" scenes of the world stream with base seed `seed`; with
    `caption_variants` k > 1 and captions among the fields, each scene comes with k captions (see `Pool`)."""
    from ldmcli.world.scenes import scene_seeds
    if size % 4:
        raise UsageError(f"image size must be a multiple of 4, got {size}")
    fields = tuple(fields)
    seeds = list(itertools.islice(scene_seeds("train", seed), n))[rank::world]
    pool = _stack(_records(_world_chunk, seeds, size, fields, workers), fields)
    if "caption" in fields and caption_variants > 1:
        pool.captions += _caption_variants(seeds, caption_variants)
    return pool


def _leaves_chunk(args, thin: float = 0.0) -> List[dict]:
    from ldmcli.world.deadleaves import dead_leaves
    seeds, size, fields = args
    return [_picture_record(dead_leaves(s, size, thin), "", size, fields) for s in seeds]


def leaves_pool(size: int, n: int, seed: int, fields: Sequence[str] = (), rank: int = 0, world: int = 1,
                workers: int = 1, thin: float = 0.0) -> Pool:
    """This process's shard of n dead-leaves examples of the stream with base seed `seed`, `thin` of their
    ellipses and rectangles drawn as strokes (world/deadleaves.py)."""
    fields = tuple(f for f in fields if f not in WORLD_ONLY)
    seeds = [mix_seed(seed, i, 0x1EAF) for i in range(n)][rank::world]
    return _stack(_records(partial(_leaves_chunk, thin=thin), seeds, size, fields, workers), fields)


def join_pools(a: Pool, b: Pool) -> Pool:
    """a's examples then b's (b with one caption per image); a's caption variants stay variant-major (Pool)."""
    tensors = {k: torch.cat([a.tensors[k], b.tensors[k]]) for k in a.tensors}
    k = max(1, len(a.captions) // max(a.n_images, 1))
    captions = []
    for v in range(k):
        captions += a.captions[v * a.n_images:(v + 1) * a.n_images] + b.captions
    return Pool(tensors, captions, world_images=a.n_images)


def folder_images(path) -> List[Path]:
    """The image files of a folder (not recursive), sorted by name."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"--data {path}: not a directory (give 'world' or a folder of images with .txt captions)")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"--data {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def folder_pool(path, size: int, fields: Sequence[str] = (), rank: int = 0, world: int = 1) -> Pool:
    """This process's shard of a folder of images with `<stem>.txt` captions."""
    from ldmcli.io.images import centre_square, load_image
    fields = tuple(fields)
    bad = [f for f in fields if f in WORLD_ONLY]
    if bad:
        raise UsageError(f"{', '.join(bad)} conditions exist only for the shapes world (--data world)")
    records = []
    for p in folder_images(path)[rank::world]:
        img = centre_square(load_image(p), size)
        caption_file = p.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        records.append(_picture_record(img, caption, size, fields))
    if not records:
        raise UsageError(f"--data {path}: fewer images than processes ({world})")
    return _stack(records, fields)


def world_vocabulary() -> Tuple[str, ...]:
    """Every word a shapes-world caption can use (tokenizers/words.py layout: specials, then sorted words)."""
    from ldmcli.world.scenes import background_phrase
    from ldmcli.world.vocab import COLOURS, POSITION_PHRASES, SHAPES, SIZES, TEXTURES
    phrases = [*SHAPES, *COLOURS, *SIZES, *POSITION_PHRASES, "a an and"]
    phrases += [background_phrase(c, t) for c in COLOURS for t in TEXTURES]
    return build_vocab(phrases)


def folder_vocabulary(path) -> Tuple[str, ...]:
    """Every word of the folder's captions (all of them, not one shard's, so every process builds one model)."""
    texts = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in folder_images(path)
             if p.with_suffix(".txt").is_file()]
    return build_vocab(texts)


# ---- which examples a step sees -------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _epoch_order(seed: int, rank: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(mix_seed(seed, rank, epoch, 0xDA7A))
    return torch.randperm(n, generator=g)


def batch_indices(step: int, batch: int, n: int, seed: int, rank: int = 0) -> torch.Tensor:
    """Pool indices of this process's batch at `step`: positions step·batch … of the concatenated seeded
    per-epoch permutations of range(n)."""
    out, pos = [], step * batch
    while sum(len(o) for o in out) < batch:
        epoch, offset = divmod(pos, n)
        take = min(batch - sum(len(o) for o in out), n - offset)
        out.append(_epoch_order(seed, rank, epoch, n)[offset:offset + take])
        pos += take
    return torch.cat(out)


def data_pool(data: str, size: int, n: int, seed: int, task: str, rank: int = 0, world: int = 1,
              workers: int = 1, caption_variants: int = 1, leaves: int = 0, thin: float = 0.0) -> Pool:
    """The pool a stage trains on: `data` is "world" or a folder path (one caption per image: its .txt); with
    world data, `leaves` dead-leaves examples follow the n world ones (`thin`: leaves_pool)."""
    fields = TASK_FIELDS[task]
    if data == "world":
        pool = world_pool(size, n, seed, fields, rank, world, workers, caption_variants)
        if leaves:
            pool = join_pools(pool, leaves_pool(size, leaves, seed, fields, rank, world, workers, thin))
        return pool
    return folder_pool(data, size, fields, rank, world)


def vocabulary(data: str) -> Tuple[str, ...]:
    return world_vocabulary() if data == "world" else folder_vocabulary(data)


__all__ = ["Pool", "TASK_FIELDS", "mix_seed", "world_layout_tokens", "unconditional_layout", "world_pool",
           "folder_pool", "folder_images", "leaves_pool", "join_pools", "world_vocabulary", "folder_vocabulary",
           "batch_indices", "data_pool",
           "vocabulary"]
