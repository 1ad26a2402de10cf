"""Building elevations: a facade drawn from a seed, and a caption and metadata that state what is drawn.

Storeys, windows per storey, material, roof, door side and balconies are sampled first; the drawing
and the text are both made from them, so no caption claims what the pixels do not show. The window,
door and balcony boxes come from one function, so a line drawing of a facade (facade_pairs) traces
exactly the pixels the render fills.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw

from archdiff.data.synth.common import RGB, Box, fill, generate, plural

FACADE_SHAPES = {"wide": (384, 256), "square": (256, 256), "tall": (256, 384)}
FACADE_SHAPE_WEIGHTS = {"wide": 5, "square": 2, "tall": 1}
STOREY_RANGE = {"wide": (1, 4), "square": (1, 5), "tall": (5, 6)}
WALL_FRACTION = {"wide": (0.6, 0.86), "square": (0.6, 0.86), "tall": (0.5, 0.72)}
MATERIALS = ("brick", "concrete", "timber", "glass", "stone", "render")
ROOFS = ("flat", "gable", "shed")
DOORS = ("centre", "left", "right")

MATERIAL_WORDS = {
    "brick": "red brick",
    "concrete": "concrete",
    "timber": "timber-clad",
    "glass": "glass curtain-wall",
    "stone": "stone",
    "render": "white-rendered",
}
DOOR_ADJECTIVE = {"centre": "central", "left": "left-hand", "right": "right-hand"}
DOOR_PLACE = {"centre": "in the centre", "left": "on the left", "right": "on the right"}

SKIES = (((118, 168, 220), (205, 225, 242)), ((168, 176, 188), (222, 225, 229)), ((150, 170, 210), (238, 214, 190)))
ROOF_COLOURS = ((72, 78, 90), (96, 64, 48), (168, 82, 58), (140, 146, 150))
DOOR_COLOURS = ((90, 50, 30), (40, 70, 50), (120, 30, 30), (35, 35, 40))
PANE, PANE_LIGHT = (52, 70, 90), (84, 108, 130)


@dataclass(frozen=True)
class Facade:
    """Everything the caption and metadata state, plus the geometry that draws it."""

    width: int
    height: int
    storeys: int
    windows_per_storey: int
    material: str
    roof: str
    door: str
    balconies: bool
    wall: Box
    storey_height: int
    roof_space: int
    scale: float = 1.0  # the short side over 256: the pixel sizes of roofs, windows and doors grow with it

    def px(self, pixels: int) -> int:
        """A size in pixels at 256, at this facade's scale."""
        return round(pixels * self.scale)


@dataclass(frozen=True)
class Opening:
    """A window or the door, in the render's pixels; ``balcony`` when one is drawn under the window."""

    box: Box
    door: bool
    balcony: bool


def _shape_of(width: int, height: int) -> str:
    return "wide" if width > 1.2 * height else "tall" if height > 1.2 * width else "square"


def sample_facade(rng: random.Random, size: tuple[int, int] | None = None) -> Facade:
    """The parameters of one facade; ``size`` (width, height) fixes the image size, else a shape is drawn at random."""
    if size is None:
        shape = rng.choices(list(FACADE_SHAPE_WEIGHTS), weights=list(FACADE_SHAPE_WEIGHTS.values()))[0]
        width, height = FACADE_SHAPES[shape]
    else:
        width, height = size
        shape = _shape_of(width, height)
    scale = min(width, height) / 256
    storeys = rng.randint(*STOREY_RANGE[shape])
    ground_y = height - height // 14
    roof_space = height // 7
    storey_height = min((ground_y - height // 10 - roof_space) // storeys, round(58 * scale))
    wall_w = int(width * rng.uniform(*WALL_FRACTION[shape]))
    x0 = rng.randint(width // 20, width - width // 20 - wall_w)
    door = rng.choice(DOORS)
    # A central door sits in the middle of M + 1 ground-floor slots, which needs M even.
    choices = [m for m in range(2, min(8, wall_w // round(26 * scale)) + 1) if door != "centre" or m % 2 == 0]
    return Facade(
        width=width,
        height=height,
        storeys=storeys,
        windows_per_storey=rng.choice(choices),
        material=rng.choice(MATERIALS),
        roof=rng.choice(ROOFS),
        door=door,
        balconies=storeys >= 2 and rng.random() < 0.5,
        wall=(x0, ground_y - storeys * storey_height, x0 + wall_w, ground_y),
        storey_height=storey_height,
        roof_space=roof_space,
        scale=scale,
    )


def _draw_sky_and_ground(draw: ImageDraw.ImageDraw, f: Facade, rng: random.Random) -> None:
    top, bottom = rng.choice(SKIES)
    ground_y = f.wall[3]
    for y in range(ground_y):
        t = y / max(ground_y - 1, 1)
        draw.line((0, y, f.width, y), fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    fill(draw, (0, ground_y, f.width, f.height), (150, 150, 148))
    fill(draw, (0, ground_y, f.width, ground_y + 2), (108, 108, 106))


def _draw_roof(draw: ImageDraw.ImageDraw, f: Facade, rng: random.Random) -> list[tuple[int, int]]:
    """Draw the roof; returns its outline (PIL polygon points), for the line drawing of the same facade."""
    x0, y0, x1, _ = f.wall
    colour = rng.choice(ROOF_COLOURS)
    edge = tuple(c // 2 for c in colour)
    over, thick = f.px(3), f.px(6)
    if f.roof == "flat":
        fill(draw, (x0 - over, y0 - thick, x1 + over, y0), colour)
        fill(draw, (x0 - over, y0 - thick, x1 + over, y0 - f.px(4)), edge)
        return [(x0 - over, y0 - thick), (x1 + over - 1, y0 - thick), (x1 + over - 1, y0 - 1), (x0 - over, y0 - 1)]
    over = f.px(6)
    rise = round(f.roof_space * rng.uniform(0.6, 0.95))
    if f.roof == "gable":
        outline = [(x0 - over, y0), (x1 + over, y0), ((x0 + x1) // 2, y0 - rise)]
    else:
        left, right = (over, rise) if rng.random() < 0.5 else (rise, over)
        outline = [(x0 - over, y0), (x1 + over, y0), (x1 + over, y0 - right), (x0 - over, y0 - left)]
    draw.polygon(outline, fill=colour, outline=edge)
    fill(draw, (x0 - over, y0 - f.px(3), x1 + over, y0), edge)
    return outline


def _draw_brick(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    fill(draw, box, (192, 182, 166))
    tones = ((150, 68, 48), (138, 60, 42), (162, 78, 55))
    for row, y in enumerate(range(y0, y1, 5)):
        for x in range(x0 - 6 * (row % 2), x1, 12):
            fill(draw, (max(x, x0), y, min(x + 11, x1), min(y + 4, y1)), rng.choice(tones))


def _draw_concrete(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    fill(draw, box, (118, 118, 116))
    columns = max(2, round((x1 - x0) / 48))
    edges = [x0 + (x1 - x0) * i // columns for i in range(columns + 1)]
    tones = ((168, 168, 163), (160, 161, 157), (175, 174, 168))
    for y in range(y0, y1, f.storey_height):
        for left, right in pairwise(edges):
            fill(draw, (left + 1, y + 1, right, y + f.storey_height), rng.choice(tones))


def _draw_timber(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    fill(draw, box, (70, 45, 28))
    tones = ((128, 86, 52), (118, 78, 46), (138, 94, 58))
    for x in range(x0, x1, 7):
        fill(draw, (x, y0, min(x + 6, x1), y1), rng.choice(tones))


def _draw_glass(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    fill(draw, box, (74, 84, 94))
    tones = ((110, 138, 160), (118, 146, 166), (104, 130, 152))
    half = f.storey_height // 2
    for y in range(y0, y1, half):
        for x in range(x0, x1, 16):
            fill(draw, (x + 1, y + 1, min(x + 16, x1), min(y + half, y1)), rng.choice(tones))


def _draw_stone(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    fill(draw, box, (165, 150, 120))
    tones = ((205, 190, 155), (196, 180, 145), (212, 198, 165))
    for y in range(y0, y1, 10):
        x = x0 - rng.randint(0, 20)
        while x < x1:
            length = rng.randint(18, 30)
            fill(draw, (max(x, x0), y, min(x + length - 1, x1), min(y + 9, y1)), rng.choice(tones))
            x += length


def _draw_render(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    fill(draw, box, (236, 233, 224))
    fill(draw, (x0, y1 - 6, x1, y1), (190, 186, 176))


WALL_PAINTERS = {
    "brick": _draw_brick,
    "concrete": _draw_concrete,
    "timber": _draw_timber,
    "glass": _draw_glass,
    "stone": _draw_stone,
    "render": _draw_render,
}


def _window_frame(material: str) -> RGB:
    return {"concrete": (60, 60, 60), "glass": (205, 210, 215)}.get(material, (245, 245, 240))


def _draw_window(draw: ImageDraw.ImageDraw, box: Box, frame: RGB) -> None:
    """A framed pane with a cross bar and a lighter upper half for reflected sky."""
    x0, y0, x1, y1 = box
    fill(draw, box, frame)
    fill(draw, (x0 + 2, y0 + 2, x1 - 2, y1 - 2), PANE)
    fill(draw, (x0 + 2, y0 + 2, x1 - 2, (y0 + y1) // 2), PANE_LIGHT)
    fill(draw, ((x0 + x1) // 2 - 1, y0, (x0 + x1) // 2 + 1, y1), frame)
    fill(draw, (x0, (y0 + y1) // 2, x1, (y0 + y1) // 2 + 1), frame)


def balcony_box(f: Facade, window: Box) -> Box:
    """The slab under a window and the railing in front of its lower part, as one box."""
    x0, _, x1, y1 = window
    return x0 - f.px(4), y1 - round(f.storey_height * 0.2), x1 + f.px(4), y1 + f.px(3)


def _draw_balcony(draw: ImageDraw.ImageDraw, f: Facade, window: Box) -> None:
    x0, rail_top, x1, bottom = balcony_box(f, window)
    fill(draw, (x0, window[3], x1, bottom), (92, 92, 96))
    fill(draw, (x0, rail_top, x1, rail_top + 1), (40, 40, 45))
    for x in range(x0, x1, 3):
        fill(draw, (x, rail_top, x + 1, window[3]), (40, 40, 45))


def _slot_centres(x0: int, x1: int, n: int) -> list[float]:
    return [x0 + (x1 - x0) * (i + 0.5) / n for i in range(n)]


def facade_openings(f: Facade) -> list[Opening]:
    """Windows on every storey and the door on the ground floor, storey by storey from the ground up.

    Upper storeys split the wall into M equal bays; the ground floor uses M + 1
    slots, one for the door, so every storey really has M windows.
    """
    x0, _, x1, y1 = f.wall
    m, sh = f.windows_per_storey, f.storey_height
    win_h = round(sh * 0.55)
    openings = []
    for storey in range(f.storeys):
        top = y1 - (storey + 1) * sh + round(sh * 0.22)
        slots = m if storey else m + 1
        door_slot = {"left": 0, "right": m, "centre": m // 2}[f.door] if storey == 0 else None
        win_w = min(round((x1 - x0) / slots * 0.46), f.px(44))
        for i, cx in enumerate(_slot_centres(x0, x1, slots)):
            if i == door_slot:
                door_w = min(round((x1 - x0) / slots * 0.55), f.px(30))
                box = (round(cx - door_w / 2), y1 - round(sh * 0.8), round(cx + door_w / 2), y1)
                openings.append(Opening(box, door=True, balcony=False))
            else:
                box = (round(cx - win_w / 2), top, round(cx + win_w / 2), top + win_h)
                openings.append(Opening(box, door=False, balcony=bool(storey) and f.balconies))
    return openings


def _draw_openings(draw: ImageDraw.ImageDraw, f: Facade, rng: random.Random) -> None:
    frame = _window_frame(f.material)
    for opening in facade_openings(f):
        if opening.door:
            _draw_door(draw, opening.box, rng)
            continue
        _draw_window(draw, opening.box, frame)
        if opening.balcony:
            _draw_balcony(draw, f, opening.box)


def _draw_door(draw: ImageDraw.ImageDraw, box: Box, rng: random.Random) -> None:
    bottom = box[3]
    fill(draw, box, (45, 40, 38))
    fill(draw, (box[0] + 2, box[1] + 2, box[2] - 2, bottom), rng.choice(DOOR_COLOURS))
    fill(draw, (box[2] - 5, (box[1] + bottom) // 2, box[2] - 3, (box[1] + bottom) // 2 + 2), (210, 190, 120))


def render_facade(f: Facade, rng: random.Random) -> tuple[Image.Image, list[tuple[int, int]]]:
    """The facade's pixels, and its roof outline (the one part of the geometry drawn from the seed while rendering)."""
    image = Image.new("RGB", (f.width, f.height))
    draw = ImageDraw.Draw(image)
    _draw_sky_and_ground(draw, f, rng)
    roof = _draw_roof(draw, f, rng)
    WALL_PAINTERS[f.material](draw, f.wall, f, rng)
    _draw_openings(draw, f, rng)
    return image, roof


def facade_caption(f: Facade, rng: random.Random) -> str:
    storey_adj = "single-storey" if f.storeys == 1 else f"{f.storeys}-storey"
    material, m = MATERIAL_WORDS[f.material], f.windows_per_storey
    templates = (
        f"a facade of a {storey_adj} {material} building with {m} windows per storey, "
        f"a {f.roof} roof and a {DOOR_ADJECTIVE[f.door]} door" + (", balconies" if f.balconies else ""),
        f"front elevation of a {storey_adj} {material} building, {m} windows on each floor, "
        f"{f.roof} roof, {DOOR_ADJECTIVE[f.door]} entrance door" + (", with balconies" if f.balconies else ""),
        f"{material} building facade, {plural(f.storeys, 'storey')}, {m} windows per storey, "
        f"{f.roof} roof, door {DOOR_PLACE[f.door]}" + (", balconies on the upper floors" if f.balconies else ""),
    )
    return rng.choice(templates)


def facade_columns(f: Facade) -> dict:
    return {
        "storeys": f.storeys,
        "windows_per_storey": f.windows_per_storey,
        "material": f.material,
        "roof": f.roof,
        "door": f.door,
        "balconies": f.balconies,
        "wall_box": list(f.wall),
        "width": f.width,
        "height": f.height,
    }


def _draw_facade(rng: random.Random) -> tuple[str, dict, Image.Image]:
    """One facade, taking from the seed in a fixed order: its parameters, its pixels, then its caption."""
    facade = sample_facade(rng)
    image, _ = render_facade(facade, rng)
    return facade_caption(facade, rng), facade_columns(facade), image


def generate_facades(out_dir: Path, count: int = 32, seed: int = 0) -> None:
    """Write ``count`` building-elevation images and their ``metadata.jsonl``."""
    generate(out_dir, "facade", "photo", count, seed, _draw_facade)
