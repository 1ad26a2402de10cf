"""Label text for the PNGs both commands draw: one font, and lines fitted to a width in pixels."""

from __future__ import annotations

from PIL import ImageFont

GAP = 16  # px between cells, panels and the image edge
FONT_SIZE = 14
LINE_HEIGHT = 18


def label_font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_text(text: str, font, width: int) -> str:
    """The text, cut with '...' if it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap_text(text: str, font, width: int, max_lines: int) -> list[str]:
    """Word-wrapped to `width` pixels; the last kept line ends in '...' when the text goes on."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    return [fit_text(line, font, width) for line in lines]
