"""Images of words drawn with Pillow, with each word's box known: text detection ground truth.

Deterministic from its recipe (same seed, same Pillow and FreeType: the same pixels). Words come
from the fixed list below; fonts are the DejaVu faces that matplotlib ships. Each
image holds `min_words` to `max_words` words at random sizes, faces, contrasts and places that
never overlap, on a two-colour gradient with pixel noise and a few lines and outlines that are
not text, dark text on light or the other way round, slightly blurred. A word's box is the
tight box of its drawn ink.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
         "DejaVuSansMono.ttf")
GAP = 6  # pixels kept free around every word, so no two words' boxes touch
# Fixed here, not read from a corpus whose text changes between versions.
_WORD_TEXT = """
    the model size speed accuracy image text word shop street coffee Market STATION open
    closed Exit Entrance London Paris Berlin Tokyo delta river mountain garden library
    Museum hotel bakery pharmacy parking ticket platform north south east west Monday
    Friday January October invoice receipt total amount balance payment Welcome Sale
    discount quality transformer network quantize pruning compression benchmark baseline
    regression detector recognition printing newspaper chapter section paragraph summary
    abstract Introduction method results conclusion figure table appendix reference
    orange yellow purple silver golden winter summer autumn spring morning evening
    breakfast dinner window kitchen bedroom bicycle airplane harbour lighthouse castle
    village Avenue Boulevard Road Lane Square Bridge Tower Hall Park Gate Lake Hill
    """
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class SceneRecipe:
    width: int = 384  # multiples of 32: CRAFT's U-Net halves the size five times
    height: int = 256
    min_words: int = 4
    max_words: int = 10
    min_size: int = 10  # font size in pixels
    max_size: int = 36
    min_contrast: int = 50  # grey levels between a word and the background under it
    clutter: int = 4  # up to this many lines, boxes and ellipses that are not text
    max_blur: float = 1.0  # Gaussian blur radius, drawn per image
    noise: int = 12  # background pixels move by up to +-noise
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 of each word's ink


def scenes(recipe: SceneRecipe, count: int, split: str) -> list[Scene]:
    """`count` scenes of a split; "val" and "train" draw from separate random streams."""
    rng = np.random.default_rng([recipe.seed, {"train": 0, "val": 1}[split]])
    return [draw(recipe, rng) for _ in range(count)]


def draw(recipe: SceneRecipe, rng: np.random.Generator) -> Scene:
    dark = rng.random() < 0.3  # light text on a dark background
    image = Image.fromarray(_background(recipe, rng, dark))
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(recipe.clutter + 1))):
        _clutter(pen, recipe, rng)
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(recipe.min_words, recipe.max_words + 1))):
        word = WORDS[int(rng.integers(len(WORDS)))]
        font = _font(FACES[int(rng.integers(len(FACES)))],
                     int(rng.integers(recipe.min_size, recipe.max_size + 1)))
        x0, y0, x1, y1 = pen.textbbox((0, 0), word, font=font)
        w, h = x1 - x0, y1 - y0
        if w + 2 * GAP >= recipe.width or h + 2 * GAP >= recipe.height:
            continue
        for _attempt in range(20):  # a free place, or the word is left out
            x = int(rng.integers(GAP, recipe.width - w - GAP))
            y = int(rng.integers(GAP, recipe.height - h - GAP))
            box = (x, y, x + w, y + h)
            if not any(_near(box, other) for other in taken):
                under = np.asarray(image)[y:y + h, x:x + w].mean()
                contrast = int(rng.integers(recipe.min_contrast, 200))
                tone = min(255, under + contrast) if dark else max(0, under - contrast)
                colour = tuple(int(np.clip(tone + rng.integers(-20, 21), 0, 255))
                               for _ in range(3))
                pen.text((x - x0, y - y0), word, font=font, fill=colour)
                taken.append(box)
                break
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, recipe.max_blur))))
    return Scene(np.asarray(image), np.array(taken, dtype=np.float32).reshape(-1, 4))


def _clutter(pen: ImageDraw.ImageDraw, recipe: SceneRecipe, rng: np.random.Generator) -> None:
    """A line, box outline or ellipse outline: edges a text detector must not call text."""
    xs = sorted(rng.integers(0, recipe.width, size=2).tolist())
    ys = sorted(rng.integers(0, recipe.height, size=2).tolist())
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    width = int(rng.integers(1, 4))
    shape = int(rng.integers(3))
    if shape == 0:
        pen.line([xs[0], ys[0], xs[1], ys[1]], fill=colour, width=width)
    elif shape == 1:
        pen.rectangle([xs[0], ys[0], xs[1], ys[1]], outline=colour, width=width)
    else:
        pen.ellipse([xs[0], ys[0], xs[1], ys[1]], outline=colour, width=width)


def _background(recipe: SceneRecipe, rng: np.random.Generator, dark: bool) -> np.ndarray:
    low, high = (10, 110) if dark else (150, 250)
    a, b = rng.integers(low, high, size=(2, 3))
    t = np.linspace(0.0, 1.0, recipe.width)[None, :, None]
    if rng.random() < 0.5:  # vertical gradient instead of horizontal
        t = np.linspace(0.0, 1.0, recipe.height)[:, None, None]
    base = a + (b - a) * t
    noise = rng.integers(-recipe.noise, recipe.noise + 1, size=(recipe.height, recipe.width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _near(a: tuple, b: tuple) -> bool:
    """Whether two boxes come closer than GAP pixels."""
    return not (a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1]
                or b[3] + GAP <= a[1])


@cache
def _font(face: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / face),
                              size)
