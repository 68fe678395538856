"""Everything between a model and a latent (imports nothing itself, so `ldm --help` stays free of torch).

- schedules.py: ᾱ of the training schedule, σ ↔ t, and the schedules `(alphas_cumprod, steps) -> Grid` (SCHEDULES).
- samplers.py: the samplers, plain functions over a denoiser and a Grid; `grid_for` and the `sample` dispatch.
- table.py: the sampler table (names, default schedules, labels), torch-free for the CLI.
- guidance.py, blending.py, tiling.py: denoiser wrappers (CFG and v → ε, latent inpainting's known region,
  MultiDiffusion tiles) and the tiled first-stage decode/encode.
- noise.py: seeded noise; settings.py: SamplerSettings; memory.py: the memory model.
- pipeline.py: what every task shares, `sample_latents` and `decode` with its fallbacks.
"""
