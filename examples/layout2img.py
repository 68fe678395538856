"""Objects in boxes with the Python API: the embedded default's shapes-world labels, or any layout2img checkpoint.

    python examples/layout2img.py                                  # a red circle top left, a blue square bottom right
    python examples/layout2img.py --ckpt layout2img-openimages256.ckpt --label 0 --label 1   # class numbers
"""
import argparse

from ldmcli.io.layout import LayoutBox
from ldmcli.loading import load
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.layout2img import layout2img, list_labels

p = argparse.ArgumentParser()
p.add_argument("--ckpt")
p.add_argument("--label", action="append", help="two labels: names (--list-labels) or class numbers")
args = p.parse_args()

model, _ = load(args.ckpt, task="layout2img")
labels = args.label or ["red circle", "blue square"]
print("first labels of the model:", ", ".join(list_labels(model)[:6]), "...")
# x0, y0, x1, y1 as fractions of the image; the default's world: objects about a quarter of the side across,
# centred on a 3x3 grid
boxes = [LayoutBox(labels[0], (0.04, 0.04, 0.30, 0.30)),
         LayoutBox(labels[1], (0.70, 0.70, 0.96, 0.96))]
images = layout2img(model, boxes, seeds=[0, 1], settings=SamplerSettings())
for i, img in enumerate(images):
    img.save(f"layout-{i}.png")
    print(f"layout-{i}.png", img.size)
