"""Inpainting with the Python API: white mask pixels are repainted, every other pixel is kept exactly.

    python examples/inpaint.py photo.png mask.png                       # embedded default: refill from around the hole
    python examples/inpaint.py photo.png mask.png "a cat" --ckpt sd-v1-5-inpainting.ckpt
"""
import argparse

from ldmcli.io.images import load_image, load_mask
from ldmcli.loading import load
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.inpaint import inpaint

p = argparse.ArgumentParser()
p.add_argument("image")
p.add_argument("mask")
p.add_argument("prompt", nargs="?", default="")
p.add_argument("--ckpt")
args = p.parse_args()

model, _ = load(args.ckpt, task="inpaint")   # SD inpainting, LDM inpainting_big, or any txt2img model (blending)
image = load_image(args.image)
mask = load_mask(args.mask, size=image.size, blur=2)     # float [H, W] in [0, 1], feathered edge
out = inpaint(model, image, mask, args.prompt, seeds=[0], settings=SamplerSettings(steps=30))[0]
out.save("inpainted.png")
print("inpainted.png")
