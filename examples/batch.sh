#!/usr/bin/env bash
# The CLI from a shell script: one model load per batch, resumable, data on stdout, logs on stderr.
# Every subcommand works offline on the embedded defaults; add --ckpt FILE for a public checkpoint.
set -euo pipefail
out=${1:-out}
mkdir -p "$out"

# 1. many prompts, one process; rerunning skips finished images (deterministic names: index + seed)
cat > "$out/prompts.txt" <<'TXT'
a red circle
a large blue star at the top left and a small yellow square in the center on a gray background
a green heart on a noisy white background
TXT
ldm txt2img --from-file "$out/prompts.txt" --seed 7 -o "$out/txt2img/" --quiet > "$out/written.txt"
wc -l < "$out/written.txt"

# 2. JSONL jobs carry any per-job option; --json prints one record per image (path, seed, job, timings)
printf '%s\n' '{"prompt": "a purple hexagon", "seed": 1, "steps": 20}' \
              '{"prompt": "an orange triangle at the bottom right", "seed": 2, "name": "triangle"}' \
  | ldm txt2img --from-file - -o "$out/jsonl/" --json

# 3. chain tasks through files: generate, upscale ×4, read the metadata back, regenerate bit for bit
img=$(ldm txt2img "a cyan square" --seed 3 -o "$out/square.png")
ldm superres "$img" --scale 4 -o "$out/square-x4.png"
ldm info "$img"
ldm replay "$img" -o "$out/square-replayed.png"
cmp <(python -c 'import sys,PIL.Image as I; print(I.open(sys.argv[1]).tobytes().hex())' "$img") \
    <(python -c 'import sys,PIL.Image as I; print(I.open(sys.argv[1]).tobytes().hex())' "$out/square-replayed.png") \
  && echo "replay identical"

# 4. inpaint inside a mask (pixels outside the mask are kept exactly)
python - "$out" <<'PY'
import sys
from PIL import Image, ImageDraw
m = Image.new("L", Image.open(f"{sys.argv[1]}/square.png").size, 0)
ImageDraw.Draw(m).ellipse((8, 8, 40, 40), fill=255)
m.save(f"{sys.argv[1]}/mask.png")
PY
ldm inpaint "$img" --mask "$out/mask.png" -o "$out/inpainted.png"             # refill the hole from around it

# 5. layouts and segmentation maps
# the default's boxes: objects about a quarter of the side across, centred on its 3x3 grid
ldm layout2img --box "red circle 0.04 0.04 0.3 0.3" --box "blue square 0.7 0.7 0.96 0.96" -o "$out/layout.png"
ldm semantic2img --list-labels
python - "$out" <<'PY'
import sys
import numpy as np
from PIL import Image
seg = np.zeros((64, 64), np.uint8); seg[10:40, 10:40] = 1; seg[36:60, 30:60] = 2   # background, circle, square
Image.fromarray(seg, "L").save(f"{sys.argv[1]}/seg.png")
PY
ldm semantic2img "$out/seg.png" -o "$out/semantic.png"

# exit codes: 0 ok, 1 runtime failure, 2 bad input, 3 some jobs failed, 130 interrupted
ldm txt2img "x" --ckpt /nonexistent.ckpt -o "$out/never.png" || echo "exit $? (bad input)"
