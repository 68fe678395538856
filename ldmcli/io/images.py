"""Reading the user's images, masks and label maps: every failure is one `InputError` line naming the file.

Conventions, fixed here once for every task:
- `load_image` returns 8-bit RGB. Alpha is composited on **black** (rgb·α, i.e. premultiplied): the colour under a
  fully transparent pixel is arbitrary, and black is also what LDM inpainting paints into a hole (MODELS.md §9).
- 16-bit greyscale is scaled to 8 bits (v/257, rounded) where Pillow's own convert("RGB") would clip it at 255;
  16-bit RGB is reduced to 8 bits by Pillow when it opens the file. CMYK uses Pillow's conversion.
- EXIF orientation is applied, so pixels are laid out as an image viewer shows them (and as masks get drawn).
- Files are decoded in full on load, so a truncated file fails here and not halfway through a batch, and images
  above `MAX_PIXELS` (8192² ≈ 67 MP) are refused from their header alone, before any pixel is decoded.
- Masks: white (1) = repaint, black (0) = keep; a mask with alpha is composited on black like an image.
"""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from ldmcli.errors import InputError, UsageError, one_line

if TYPE_CHECKING:
    import torch

PathLike = Union[str, Path]

MAX_PIXELS = 8192 * 8192        # far above any LDM/SD working size, far below a decompression bomb
MAX_PIPE_BYTES = 256 * 2**20    # what is read at most from a pipe or device (`--image <(curl ...)`)
ASPECT_TOLERANCE = 0.01         # a mask whose aspect ratio is within 1 % of the image's is resized to it
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")   # "I": how Pillow opens some 16-bit files
_INDEX_MODES = ("L", "P", "1") + _GREY16
# Pillow logs some refusals at ERROR level ("More samples per pixel than can be decoded"); with no handler set up,
# logging's last resort would print them beside our one `ldm: error:` line. A NullHandler keeps them for
# applications that configure logging and out of a bare CLI's stderr.
logging.getLogger("PIL").addHandler(logging.NullHandler())


def check_input_path(path: Path, what: str, kind: str = "an image file") -> None:
    """An input path must exist and not be a directory (a pipe or device is fine): else one InputError line."""
    if not path.exists():
        raise InputError(f"{what} {path}: no such file")
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory, not {kind}")


def _source(path: Path, what: str) -> Union[Path, io.BytesIO]:
    """What to hand Image.open: a regular file's path, or the bytes of a pipe/device (Pillow needs to seek)."""
    check_input_path(path, what)
    if path.is_file():
        return path
    with open(path, "rb") as f:
        data = f.read(MAX_PIPE_BYTES + 1)
    if len(data) > MAX_PIPE_BYTES:
        raise InputError(f"{what} {path}: more than {MAX_PIPE_BYTES >> 20} MiB read from a pipe or device")
    return io.BytesIO(data)


def _check_size(where: str, size) -> None:
    if size is None:
        raise InputError(f"{where}: image dimensions over the {MAX_PIXELS / 1e6:.1f} MP limit")
    w, h = size
    if w * h > MAX_PIXELS:
        raise InputError(f"{where}: {w}x{h} pixels ({w * h / 1e6:.1f} MP) is over the "
                         f"{MAX_PIXELS / 1e6:.1f} MP limit")


def _header_size(src) -> tuple[int, int] | None:
    """(W, H) from a format plugin's header parse alone: past Pillow's own bomb limit Image.open hides the size."""
    Image.init()
    try:
        with (open(src, "rb") if isinstance(src, Path) else nullcontext(src)) as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a plugin's complaints about the header are not for the user
            fp.seek(0)
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                ok = accept(prefix) if accept else True
                if not ok or isinstance(ok, str):
                    continue
                fp.seek(0)
                try:
                    return factory(fp, "").size
                except Exception:  # not this format after all: try the next, as Image.open does
                    continue
    except OSError:
        pass
    return None


def read_image(path: PathLike, what: str = "image") -> Image.Image:
    """Open and fully decode an image file in its own mode (EXIF orientation applied), refusing it on any doubt.

    `what` names the role of the file in error messages ("mask", "index map", ...).
    """
    return _open(Path(path), what, header_only=False)


def image_size(path: PathLike, what: str = "image") -> tuple[int, int] | None:
    """(width, height) as `read_image` would lay the pixels out (EXIF orientation applied), from the header alone,
    with the same refusals for a missing, unknown or oversized file; None for a pipe or device, which can be read
    only once (the full read comes later)."""
    path = Path(path)
    check_input_path(path, what)
    return _open(path, what, header_only=True) if path.is_file() else None


def _open(path: Path, what: str, header_only: bool):
    where = f"{what} {path}"
    src = None
    try:
        src = _source(path, what)
        with warnings.catch_warnings():  # Pillow's warnings (bomb size, corrupt EXIF) are not for the user:
            warnings.simplefilter("ignore")  # the size is refused below, and a file that loads is used
            with Image.open(src) as img:
                _check_size(where, img.size)
                if header_only:   # orientations 5-8 turn the image a quarter: width and height swap
                    w, h = img.size
                    return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
                img.load()  # full decode: truncated or corrupt data fails now
                return ImageOps.exif_transpose(img)  # a copy, so closing the file keeps the pixels
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        _check_size(where, _header_size(src))
        raise InputError(f"{where}: {one_line(e)}") from None
    except UnidentifiedImageError:
        raise InputError(f"{where}: not an image file (or not a format Pillow can read)") from None
    except OSError as e:
        if e.strerror:  # the OS refused (permissions, I/O error), as opposed to Pillow finding bad data
            raise InputError(f"{where}: {e.strerror}") from None
        raise InputError(f"{where}: truncated or corrupt image ({one_line(e)})") from None
    except Exception as e:  # Pillow's decoders raise many types on hostile data (SyntaxError, struct.error, ...)
        raise InputError(f"{where}: corrupt image ({type(e).__name__}: {one_line(e)})") from None


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    """Any mode to 8-bit RGB by the conventions of the module docstring."""
    if img.mode in _GREY16:
        grey = np.clip(np.asarray(img).astype(np.int32), 0, 65535)
        return Image.fromarray(((grey + 128) // 257).astype(np.uint8)).convert("RGB")  # round(v / 257)
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # on black = premultiplied, rounded
        return Image.fromarray(rgb.astype(np.uint8))
    try:
        return img.convert("RGB")
    except ValueError:
        raise InputError(f"{where}: cannot convert colour mode {img.mode} to RGB") from None


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then resize to size × size (Pillow's bicubic filter antialiases when shrinking)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def load_image(path: PathLike) -> Image.Image:
    """An image file as an 8-bit RGB PIL image (alpha on black, 16-bit scaled, EXIF orientation applied)."""
    return _to_rgb(read_image(path, "image"), f"image {path}")


def load_mask(path: PathLike, size: tuple[int, int] | None = None, invert: bool = False,
              blur: float = 0) -> np.ndarray:
    """A mask as float32 [H, W] in [0, 1], 1 (white) = repaint. Any mode; its luminance is used.

    size: (width, height) of the image it belongs to. A mask of another size is resized with NEAREST when the
    aspect ratios agree (within 1 %), otherwise refused. blur: Gaussian feather radius in pixels of `size`.
    Values stay soft; thresholding (the reference uses 0.5) is the task's business.
    """
    if blur < 0:
        raise UsageError(f"mask blur must be >= 0, got {blur}")
    mask = _to_rgb(read_image(path, "mask"), f"mask {path}").convert("L")
    if size is not None and mask.size != tuple(size):
        check_mask_aspect(path, mask.size, size)
        mask = mask.resize(tuple(size), Image.Resampling.NEAREST)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    m = np.asarray(mask, dtype=np.float32) / 255.0
    return 1.0 - m if invert else m


def check_mask_aspect(path: PathLike, mask_size: tuple[int, int], size: tuple[int, int]) -> None:
    """The aspect rule: a mask must have its image's aspect ratio within ASPECT_TOLERANCE (it is then resized)."""
    (mw, mh), (w, h) = mask_size, size
    if abs(mw * h - mh * w) > ASPECT_TOLERANCE * mh * w:
        raise InputError(f"mask {path}: {mw}x{mh} does not fit the image's {w}x{h} (another aspect ratio); "
                         f"make the mask {w}x{h}")


def load_index_map(path: PathLike) -> np.ndarray:
    """A label map as int64 [H, W], pixel value = class id, from a single-channel image (L, P, 1 or 16-bit).

    For a palette (P) image the class id is the palette index, not the colour.
    """
    img = read_image(path, "index map")
    if img.mode not in _INDEX_MODES:
        raise InputError(f"index map {path}: a {img.mode} image holds colours, not class ids; save it as 8-bit "
                         f"greyscale or palette PNG, or pass a palette file that maps its colours to class ids")
    return np.asarray(img).astype(np.int64)


def _rgb_key(rgb) -> int:
    r, g, b = (int(c) for c in rgb)
    return (r << 16) | (g << 8) | b


def load_color_map(path: PathLike, palette: dict[tuple, int]) -> np.ndarray:
    """A colour-coded label map as int64 [H, W]: each pixel's RGB looked up in palette {(r, g, b): class id}.

    Alpha is ignored here (colours are labels, not pixels to composite); unknown colours are an InputError.
    """
    rgb = np.asarray(read_image(path, "colour map").convert("RGB"), dtype=np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(keys.ravel(), return_inverse=True)
    lut = {_rgb_key(colour): class_id for colour, class_id in palette.items()}
    unknown = [int(c) for c in colours if int(c) not in lut]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InputError(f"colour map {path}: {len(unknown)} colour(s) not in the palette: {shown}{more}")
    ids = np.array([lut[int(c)] for c in colours], dtype=np.int64)
    return ids[inverse].reshape(keys.shape)


def pil_to_tensor(img: Image.Image) -> "torch.Tensor":
    """A PIL image as float32 [1, 3, H, W] in [-1, 1]: 2·(x/255) − 1, as the reference scripts compute it."""
    import torch  # imported here: reading and checking inputs (and `ldm --help`) need not pay for torch

    x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(2.0 * x - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()  # HWC -> 1CHW


def tensor_to_pil(x: "torch.Tensor") -> list[Image.Image]:
    """[B, 3, H, W] (or [3, H, W]) in [-1, 1] to RGB images: clamp((x+1)/2, 0, 1)·255, then **truncated** to
    uint8 (astype, no rounding) exactly as the reference scripts do (MODELS.md §3.2)."""
    import torch

    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
    x = torch.clamp((x.detach().float().cpu() + 1.0) / 2.0, min=0.0, max=1.0)
    pixels = (255.0 * x.permute(0, 2, 3, 1).numpy()).astype(np.uint8)  # BCHW -> BHWC, truncation
    return [Image.fromarray(p) for p in pixels]
