"""×4 super-resolution with the Python API; large inputs are processed in blended latent tiles.

    python examples/superres.py small.png                                              # embedded default
    python examples/superres.py small.png --ckpt x4-upscaler-ema.ckpt --prompt "a sharp photo"
"""
import argparse

from ldmcli.io.images import load_image
from ldmcli.loading import load
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.superres import superres

p = argparse.ArgumentParser()
p.add_argument("image")
p.add_argument("--ckpt")
p.add_argument("--prompt", default="")
args = p.parse_args()

model, _ = load(args.ckpt, task="superres")              # LDM bsr_sr or the SD x4 upscaler
low = load_image(args.image)
high = superres(model, low, args.prompt, scale=4, seeds=[0], settings=SamplerSettings(steps=50))[0]
high.save("upscaled.png")
print(f"upscaled.png {low.size} -> {high.size}")
