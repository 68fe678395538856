"""An image that follows a segmentation map, with the Python API: build a class map in numpy, or read a PNG.

    python examples/semantic2img.py                                # a drawn map for the embedded default's classes
    python examples/semantic2img.py --map seg.png --palette palette.txt --ckpt semantic_synthesis256.ckpt
"""
import argparse

import numpy as np

from ldmcli.loading import load
from ldmcli.io.segmap import read_palette, read_segmap
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.semantic2img import class_names, semantic2img

p = argparse.ArgumentParser()
p.add_argument("--ckpt")
p.add_argument("--map", help="index PNG (class id per pixel), or a colour PNG with --palette")
p.add_argument("--palette", help="'label r g b' lines or JSON {\"#rrggbb\": label}")
args = p.parse_args()

model, _ = load(args.ckpt, task="semantic2img")
names = class_names(model)
if args.map:
    palette = read_palette(args.palette, names, len(names)) if args.palette else None
    seg = read_segmap(args.map, palette)
else:                                       # background with a disc of class 1 and a block of class 2
    size = model.cfg.image_size
    yy, xx = np.mgrid[:size, :size]
    seg = np.zeros((size, size), np.int64)
    seg[(yy - size * 0.3) ** 2 + (xx - size * 0.3) ** 2 < (size * 0.2) ** 2] = 1
    seg[size // 2:size - 2, size // 2:size - 2] = 2
    print("classes drawn:", names[1], "and", names[2])
images = semantic2img(model, seg, seeds=[0, 1], settings=SamplerSettings())
for i, img in enumerate(images):
    img.save(f"semantic-{i}.png")
    print(f"semantic-{i}.png", img.size)
