"""Seeded noise: x_T and the ancestral noise per sample, and the side streams of a sample's other randomness.

Every sample draws from generators seeded with its own seed, so a sample never depends on the batch it is in.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch import Tensor

Noise = Callable[[Tensor], Tensor]   # noise(x): fresh N(0, I) shaped like x


def initial_noise(shape: Sequence[int], seeds: List[int], device=None, dtype=torch.float32,
                  noise_device=None) -> Tensor:
    """x_T with sample k drawn from its own `torch.Generator().manual_seed(seeds[k])`.

    A sample therefore does not depend on its batch (sample k of a batch == the same seed alone). With
    noise_device="cpu" the draw happens on the CPU and is moved, so the same seed gives the same x_T on any device
    (CPU and CUDA generators produce different streams).
    """
    shape = tuple(shape)
    if shape[0] != len(seeds):
        raise ValueError(f"batch size {shape[0]} != {len(seeds)} seeds")
    gen_device = torch.device(noise_device if noise_device is not None else device or "cpu")
    xs = [torch.randn(shape[1:], generator=torch.Generator(gen_device).manual_seed(int(s)), device=gen_device,
                      dtype=dtype) for s in seeds]
    return torch.stack(xs).to(device or gen_device)


def seeded_noise(seeds: List[int], device=None, dtype=torch.float32, noise_device=None) -> Noise:
    """A `noise(x)` callable drawing sample k from a persistent generator seeded with seeds[k].

    Successive calls continue each stream, so the ancestral noise of sample k is the same whatever the batch.
    Its first draw equals `initial_noise` for the same seeds: give it different seeds (e.g. seed + offset) when
    it is used alongside `initial_noise`, or the first ancestral noise repeats x_T.
    """
    gen_device = torch.device(noise_device if noise_device is not None else device or "cpu")
    gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]

    def noise(x: Tensor) -> Tensor:
        if x.shape[0] != len(gens):
            raise ValueError(f"batch size {x.shape[0]} != {len(gens)} seeds")
        xs = [torch.randn(x.shape[1:], generator=g, device=gen_device, dtype=dtype) for g in gens]
        return torch.stack(xs).to(x.device, x.dtype)
    return noise


def side_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for a sample's other randomness (posterior sample, noise augmentation), on its own stream:
    drawn from `seed` itself it would repeat the numbers of x_T, which has the same seed and often the same shape."""
    return torch.Generator().manual_seed((int(seed) + stream) % 2**64)


__all__ = ["Noise", "initial_noise", "seeded_noise", "side_generator"]
