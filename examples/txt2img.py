"""Text to image with the Python API.

    python examples/txt2img.py "a large blue star at the top left on a gray background"   # embedded default
    python examples/txt2img.py "an astronaut riding a horse" --ckpt v1-5-pruned-emaonly.safetensors
"""
import argparse

from ldmcli.loading import load
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.txt2img import txt2img

p = argparse.ArgumentParser()
p.add_argument("prompt")
p.add_argument("--ckpt", help="checkpoint path or registry name (default: the embedded model)")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()

model, info = load(args.ckpt, task="txt2img")            # family detected from the tensors; GPU when present
images = txt2img(model, args.prompt, negative_prompt="", seeds=[args.seed, args.seed + 1],
                 settings=SamplerSettings(sampler="dpmpp_2m", steps=25))
for seed, image in zip([args.seed, args.seed + 1], images):
    image.save(f"txt2img-{seed}.png")
    print(f"txt2img-{seed}.png")
