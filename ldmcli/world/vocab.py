"""The fixed vocabulary of the shapes world: every word a caption may use, and what it looks like.

Plain tuples so that the README, the captioner, the parser and the read-back all list the same words
in the same order. Class ids of the per-pixel class map are 1 + the index into `SHAPES` (0 = background).
"""
from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart")

# sRGB per colour name; the closest pair (red/brown, orange/yellow) is still ~100 apart in RGB.
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue",
           "purple", "pink", "brown", "white", "gray", "black")
COLOUR_RGB = ((215, 35, 35), (250, 135, 15), (245, 230, 45), (40, 160, 60), (40, 210, 225), (35, 70, 210),
              (135, 55, 185), (245, 130, 195), (125, 75, 35), (245, 245, 245), (128, 128, 128), (20, 20, 20))

SIZES = ("small", "medium", "large")
# Half of the shape's larger extent, as a fraction of a grid cell's side (a large shape spans 80 % of its cell).
SIZE_RADIUS = (0.20, 0.29, 0.40)

GRID = 3  # positions are the cells of a GRID x GRID grid, row-major from the top left
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = ("at the top left", "at the top", "at the top right", "on the left", "in the center",
                    "on the right", "at the bottom left", "at the bottom", "at the bottom right")

# Background textures, and the word a caption uses for each ("on a noisy gray background",
# "on a gray gradient background"); "flat" adds no word.
TEXTURES = ("flat", "gradient", "noise")
TEXTURE_PROBS = (0.4, 0.3, 0.3)

MAX_OBJECTS = 3


def rgb(colour: str) -> tuple:
    """The sRGB triple of a colour name."""
    return COLOUR_RGB[COLOURS.index(colour)]
