"""Photos shipped in scikit-image's wheel and text drawn with Pillow (benchmark only: needs Pillow).

``load_pil(cache)`` installs Pillow into the cache with ``pip --target`` (never into the
project's environment) and imports it.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from benchmarks.real_models.fetch import cache_dir, download, pip_target

__all__ = ["SKIMAGE", "captcha", "document", "fonts", "load_pil", "photos", "text_line"]

#: Where the photos come from (pinned).
SKIMAGE = ("scikit-image", "0.26.0")
_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
           "coins.png", "page.png", "text.png", "ihc.png", "logo.png", "grass.png", "brick.png", "retina.jpg", "moon.png"]


def load_pil(cache: Path | None = None):
    """Import Pillow (``PIL.Image``, ``ImageDraw``, ``ImageFont``), installing it into the cache."""
    try:
        from PIL import Image, ImageDraw, ImageFont  # noqa: F401
    except ImportError:
        sys.path.append(str(pip_target("pillow", cache)))
        from PIL import Image, ImageDraw, ImageFont  # noqa: F401
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageFont

    return PIL.Image, PIL.ImageDraw, PIL.ImageFont


def photos(cache: Path | None = None) -> dict[str, np.ndarray]:
    """The sample photos scikit-image ships (RGB uint8 HxWx3), by file name."""
    image, _, _ = load_pil(cache)
    wheel = download(*SKIMAGE, cache_dir(cache))
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in _PHOTOS:
            data = zf.read(f"skimage/data/{name}")
            out[name] = np.asarray(image.open(io.BytesIO(data)).convert("RGB"))
    return out


def fonts() -> list[str]:
    """TrueType fonts to draw with (Debian's DejaVu when present; else Pillow's default)."""
    found = sorted(str(p) for p in Path("/usr/share/fonts").rglob("*.ttf")) if Path("/usr/share/fonts").exists() else []
    return found[:8]


def _font(font_module, paths: list[str], size: int, rng: np.random.Generator):
    if paths:
        return font_module.truetype(paths[int(rng.integers(len(paths)))], size)
    return font_module.load_default(size)


def text_line(rng: np.random.Generator, height: int = 48, words: list[str] | None = None, background: np.ndarray | None = None, cache: Path | None = None) -> np.ndarray:
    """One line of text (RGB uint8, ``height`` rows, width as needed), dark on light or light on
    dark, on a flat colour or a crop of ``background``, slightly blurred and noisy like a scan."""
    from benchmarks.real_models.media import WORDS

    image, draw_mod, font_mod = load_pil(cache)
    words = words or list(rng.choice(WORDS, size=int(rng.integers(1, 6))))
    text = " ".join(words)
    font = _font(font_mod, fonts(), int(height * rng.uniform(0.55, 0.8)), rng)
    left, top, right, bottom = font.getbbox(text)
    width = right - left + int(height * rng.uniform(0.2, 0.6))
    dark_on_light = rng.random() < 0.8
    if background is not None and rng.random() < 0.5:
        bh, bw = background.shape[:2]
        y0, x0 = int(rng.integers(0, max(1, bh - height))), int(rng.integers(0, max(1, bw - width)))
        crop = background[y0 : y0 + height, x0 : x0 + width]
        canvas = image.fromarray(crop).resize((width, height))
        ink = (0, 0, 0) if np.mean(crop) > 110 else (255, 255, 255)
    else:
        shade = int(rng.integers(200, 256)) if dark_on_light else int(rng.integers(0, 60))
        canvas = image.new("RGB", (width, height), (shade, shade, int(shade * rng.uniform(0.9, 1.0))))
        ink = tuple(int(v) for v in (rng.integers(0, 70, 3) if dark_on_light else rng.integers(200, 256, 3)))
    draw_mod.Draw(canvas).text((int(height * 0.15) - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink)
    arr = np.asarray(canvas).astype(np.float32)
    arr += rng.normal(0, 4, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def document(rng: np.random.Generator, size: tuple[int, int], photo: np.ndarray, cache: Path | None = None) -> np.ndarray:
    """A page-like image (RGB uint8, ``size`` = (H, W)): paragraphs of text at several sizes on
    paper, with the photo pasted in, or text lines over the photo itself."""
    image, draw_mod, font_mod = load_pil(cache)
    from benchmarks.real_models.media import WORDS

    h, w = size
    on_photo = rng.random() < 0.4
    if on_photo:
        canvas = image.fromarray(photo).resize((w, h))
    else:
        canvas = image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(225, 256, 3)))
        ph = int(h * rng.uniform(0.25, 0.45))
        pw = int(ph * photo.shape[1] / photo.shape[0])
        canvas.paste(image.fromarray(photo).resize((pw, ph)), (int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))))
    draw = draw_mod.Draw(canvas)
    y = int(rng.integers(5, 30))
    paths = fonts()
    while y < h - 20:
        size_px = int(rng.choice([12, 14, 16, 20, 28, 36]))
        font = _font(font_mod, paths, size_px, rng)
        line = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))
        ink = (255, 255, 255) if on_photo and rng.random() < 0.5 else tuple(int(v) for v in rng.integers(0, 60, 3))
        draw.text((int(rng.integers(5, max(6, w // 4))), y), line, font=font, fill=ink)
        y += int(size_px * rng.uniform(1.4, 2.5))
    arr = np.asarray(canvas).astype(np.float32) + rng.normal(0, 3, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def captcha(rng: np.random.Generator, cache: Path | None = None) -> np.ndarray:
    """A captcha-like image (RGB uint8, 4-6 characters, interference lines and dots)."""
    image, draw_mod, font_mod = load_pil(cache)
    chars = "abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    text = "".join(rng.choice(list(chars), size=int(rng.integers(4, 7))))
    w, h = 30 * len(text) + 20, 50
    canvas = image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(180, 256, 3)))
    draw = draw_mod.Draw(canvas)
    paths = fonts()
    x = 8
    for ch in text:
        font = _font(font_mod, paths, int(rng.integers(24, 34)), rng)
        draw.text((x, int(rng.integers(0, 12))), ch, font=font, fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        x += int(rng.integers(22, 30))
    for _ in range(int(rng.integers(2, 5))):
        draw.line([tuple(int(v) for v in (rng.integers(0, w), rng.integers(0, h))) for _ in range(2)], fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
    arr = np.asarray(canvas).astype(np.float32)
    dots = rng.random((h, w)) < 0.03
    arr[dots] = rng.integers(0, 256, (int(dots.sum()), 3))
    return np.clip(arr, 0, 255).astype(np.uint8)
