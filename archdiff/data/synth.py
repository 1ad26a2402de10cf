"""Seeded generator for the two small image sets bundled in ``datasets/``.

The bundled sets let training, evaluation and the tests run offline with nothing
to download. Every image is drawn from a seed, and its caption and metadata
columns are built from the same drawing parameters, so the text always matches
the pixels. Only PIL and the stdlib are used, so this never pulls in torch.

Regenerate with ``python -m archdiff.data.synth datasets``.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1, y1 exclusive

# --------------------------------------------------------------------------- output


def _write_dataset(out_dir: Path, prefix: str, items: list[tuple[dict, Image.Image]]) -> None:
    """Write images and an HF imagefolder ``metadata.jsonl`` in file-name order.

    Earlier ``<prefix>_*.png`` files are removed first so a smaller ``count``
    leaves no stale images behind. PIL writes no timestamp chunk, so the same
    pixels give the same bytes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out_dir.glob(f"{prefix}_*.png")):
        stale.unlink()
    lines = []
    for record, image in sorted(items, key=lambda item: item[0]["file_name"]):
        image.save(out_dir / record["file_name"], format="PNG", optimize=True)
        lines.append(json.dumps(record, ensure_ascii=True))
    (out_dir / "metadata.jsonl").write_bytes(("\n".join(lines) + "\n").encode("ascii"))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fill(draw: ImageDraw.ImageDraw, box: Box, colour: RGB) -> None:
    """Fill a half-open box; PIL's rectangle is inclusive, and empty boxes are skipped."""
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)


# --------------------------------------------------------------------------- facades

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


def _sample_facade(rng: random.Random) -> Facade:
    shape = rng.choices(list(FACADE_SHAPE_WEIGHTS), weights=list(FACADE_SHAPE_WEIGHTS.values()))[0]
    width, height = FACADE_SHAPES[shape]
    storeys = rng.randint(*STOREY_RANGE[shape])
    ground_y = height - height // 14
    roof_space = height // 7
    storey_height = min((ground_y - height // 10 - roof_space) // storeys, 58)
    wall_w = int(width * rng.uniform(*WALL_FRACTION[shape]))
    x0 = rng.randint(width // 20, width - width // 20 - wall_w)
    door = rng.choice(DOORS)
    # A central door sits in the middle of M + 1 ground-floor slots, which needs M even.
    choices = [m for m in range(2, min(8, wall_w // 26) + 1) if door != "centre" or m % 2 == 0]
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
    )


def _draw_sky_and_ground(draw: ImageDraw.ImageDraw, f: Facade, rng: random.Random) -> None:
    top, bottom = rng.choice(SKIES)
    ground_y = f.wall[3]
    for y in range(ground_y):
        t = y / max(ground_y - 1, 1)
        draw.line((0, y, f.width, y), fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    _fill(draw, (0, ground_y, f.width, f.height), (150, 150, 148))
    _fill(draw, (0, ground_y, f.width, ground_y + 2), (108, 108, 106))


def _draw_roof(draw: ImageDraw.ImageDraw, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, _ = f.wall
    colour = rng.choice(ROOF_COLOURS)
    edge = tuple(c // 2 for c in colour)
    if f.roof == "flat":
        _fill(draw, (x0 - 3, y0 - 6, x1 + 3, y0), colour)
        _fill(draw, (x0 - 3, y0 - 6, x1 + 3, y0 - 4), edge)
        return
    rise = round(f.roof_space * rng.uniform(0.6, 0.95))
    if f.roof == "gable":
        outline = [(x0 - 6, y0), (x1 + 6, y0), ((x0 + x1) // 2, y0 - rise)]
    else:
        left, right = (6, rise) if rng.random() < 0.5 else (rise, 6)
        outline = [(x0 - 6, y0), (x1 + 6, y0), (x1 + 6, y0 - right), (x0 - 6, y0 - left)]
    draw.polygon(outline, fill=colour, outline=edge)
    _fill(draw, (x0 - 6, y0 - 3, x1 + 6, y0), edge)


def _draw_brick(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    _fill(draw, box, (192, 182, 166))
    tones = ((150, 68, 48), (138, 60, 42), (162, 78, 55))
    for row, y in enumerate(range(y0, y1, 5)):
        for x in range(x0 - 6 * (row % 2), x1, 12):
            _fill(draw, (max(x, x0), y, min(x + 11, x1), min(y + 4, y1)), rng.choice(tones))


def _draw_concrete(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    _fill(draw, box, (118, 118, 116))
    columns = max(2, round((x1 - x0) / 48))
    edges = [x0 + (x1 - x0) * i // columns for i in range(columns + 1)]
    tones = ((168, 168, 163), (160, 161, 157), (175, 174, 168))
    for y in range(y0, y1, f.storey_height):
        for left, right in pairwise(edges):
            _fill(draw, (left + 1, y + 1, right, y + f.storey_height), rng.choice(tones))


def _draw_timber(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    _fill(draw, box, (70, 45, 28))
    tones = ((128, 86, 52), (118, 78, 46), (138, 94, 58))
    for x in range(x0, x1, 7):
        _fill(draw, (x, y0, min(x + 6, x1), y1), rng.choice(tones))


def _draw_glass(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    _fill(draw, box, (74, 84, 94))
    tones = ((110, 138, 160), (118, 146, 166), (104, 130, 152))
    half = f.storey_height // 2
    for y in range(y0, y1, half):
        for x in range(x0, x1, 16):
            _fill(draw, (x + 1, y + 1, min(x + 16, x1), min(y + half, y1)), rng.choice(tones))


def _draw_stone(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    _fill(draw, box, (165, 150, 120))
    tones = ((205, 190, 155), (196, 180, 145), (212, 198, 165))
    for y in range(y0, y1, 10):
        x = x0 - rng.randint(0, 20)
        while x < x1:
            length = rng.randint(18, 30)
            _fill(draw, (max(x, x0), y, min(x + length - 1, x1), min(y + 9, y1)), rng.choice(tones))
            x += length


def _draw_render(draw: ImageDraw.ImageDraw, box: Box, f: Facade, rng: random.Random) -> None:
    x0, y0, x1, y1 = box
    _fill(draw, box, (236, 233, 224))
    _fill(draw, (x0, y1 - 6, x1, y1), (190, 186, 176))


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
    _fill(draw, box, frame)
    _fill(draw, (x0 + 2, y0 + 2, x1 - 2, y1 - 2), PANE)
    _fill(draw, (x0 + 2, y0 + 2, x1 - 2, (y0 + y1) // 2), PANE_LIGHT)
    _fill(draw, ((x0 + x1) // 2 - 1, y0, (x0 + x1) // 2 + 1, y1), frame)
    _fill(draw, (x0, (y0 + y1) // 2, x1, (y0 + y1) // 2 + 1), frame)


def _draw_balcony(draw: ImageDraw.ImageDraw, window: Box, storey_height: int) -> None:
    """A slab under the window and a railing drawn in front of its lower part."""
    x0, _, x1, y1 = window
    rail_top = y1 - round(storey_height * 0.2)
    _fill(draw, (x0 - 4, y1, x1 + 4, y1 + 3), (92, 92, 96))
    _fill(draw, (x0 - 4, rail_top, x1 + 4, rail_top + 1), (40, 40, 45))
    for x in range(x0 - 4, x1 + 4, 3):
        _fill(draw, (x, rail_top, x + 1, y1), (40, 40, 45))


def _slot_centres(x0: int, x1: int, n: int) -> list[float]:
    return [x0 + (x1 - x0) * (i + 0.5) / n for i in range(n)]


def _draw_openings(draw: ImageDraw.ImageDraw, f: Facade, rng: random.Random) -> None:
    """Windows on every storey, the door on the ground floor, balconies above it.

    Upper storeys split the wall into M equal bays; the ground floor uses M + 1
    slots, one for the door, so every storey really has M windows.
    """
    x0, _, x1, y1 = f.wall
    m, sh = f.windows_per_storey, f.storey_height
    frame = _window_frame(f.material)
    win_h = round(sh * 0.55)
    for storey in range(f.storeys):
        top = y1 - (storey + 1) * sh + round(sh * 0.22)
        slots = m if storey else m + 1
        door_slot = {"left": 0, "right": m, "centre": m // 2}[f.door] if storey == 0 else None
        win_w = min(round((x1 - x0) / slots * 0.46), 44)
        for i, cx in enumerate(_slot_centres(x0, x1, slots)):
            if i == door_slot:
                _draw_door(draw, f, cx, (x1 - x0) / slots, rng)
                continue
            window = (round(cx - win_w / 2), top, round(cx + win_w / 2), top + win_h)
            _draw_window(draw, window, frame)
            if storey and f.balconies:
                _draw_balcony(draw, window, sh)


def _draw_door(draw: ImageDraw.ImageDraw, f: Facade, cx: float, slot_w: float, rng: random.Random) -> None:
    door_w = min(round(slot_w * 0.55), 30)
    bottom = f.wall[3]
    box = (round(cx - door_w / 2), bottom - round(f.storey_height * 0.8), round(cx + door_w / 2), bottom)
    _fill(draw, box, (45, 40, 38))
    _fill(draw, (box[0] + 2, box[1] + 2, box[2] - 2, bottom), rng.choice(DOOR_COLOURS))
    _fill(draw, (box[2] - 5, (box[1] + bottom) // 2, box[2] - 3, (box[1] + bottom) // 2 + 2), (210, 190, 120))


def _render_facade(f: Facade, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (f.width, f.height))
    draw = ImageDraw.Draw(image)
    _draw_sky_and_ground(draw, f, rng)
    _draw_roof(draw, f, rng)
    WALL_PAINTERS[f.material](draw, f.wall, f, rng)
    _draw_openings(draw, f, rng)
    return image


def _facade_caption(f: Facade, rng: random.Random) -> str:
    storey_adj = "single-storey" if f.storeys == 1 else f"{f.storeys}-storey"
    material, m = MATERIAL_WORDS[f.material], f.windows_per_storey
    templates = (
        f"a facade of a {storey_adj} {material} building with {m} windows per storey, "
        f"a {f.roof} roof and a {DOOR_ADJECTIVE[f.door]} door" + (", balconies" if f.balconies else ""),
        f"front elevation of a {storey_adj} {material} building, {m} windows on each floor, "
        f"{f.roof} roof, {DOOR_ADJECTIVE[f.door]} entrance door" + (", with balconies" if f.balconies else ""),
        f"{material} building facade, {_plural(f.storeys, 'storey')}, {m} windows per storey, "
        f"{f.roof} roof, door {DOOR_PLACE[f.door]}" + (", balconies on the upper floors" if f.balconies else ""),
    )
    return rng.choice(templates)


def _facade_record(index: int, f: Facade, caption: str) -> dict:
    return {
        "file_name": f"facade_{index:03d}.png",
        "text": caption,
        "kind": "photo",
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


def generate_facades(out_dir: Path, count: int = 32, seed: int = 0) -> None:
    """Write ``count`` building-elevation images and their ``metadata.jsonl``."""
    rng = random.Random(seed)
    items = []
    for index in range(count):
        facade = _sample_facade(rng)
        image = _render_facade(facade, rng)
        items.append((_facade_record(index, facade, _facade_caption(facade, rng)), image))
    _write_dataset(Path(out_dir), "facade", items)


# --------------------------------------------------------------------------- plans

PLAN_SHAPES = ((256, 256), (256, 256), (256, 256), (384, 256))
INK, PAPER = (0, 0, 0), (255, 255, 255)
OUTER_HALF, INNER_HALF = 3, 1  # walls are 2 * half + 1 pixels thick
MIN_ROOM = 56  # wide enough for the longest label between door swings
DOOR_W, WINDOW_W, CLEAR = 18, 20, 6
SPARE_ROOMS = ("KITCHEN", "BED", "HALL", "STUDY")


@dataclass(frozen=True)
class Wall:
    """An axis-aligned wall: ``at`` is its y (horizontal) or x (vertical) centre line."""

    horizontal: bool
    at: int
    lo: int
    hi: int
    half: int
    inward: int = 0  # for outer walls, the sign that points into the building


@dataclass(frozen=True)
class Opening:
    """A door or window occupying ``[start, start + length)`` along a wall."""

    wall: Wall
    start: int
    length: int
    hinge_at_start: bool = True
    swing: int = 1


@dataclass(frozen=True)
class Plan:
    width: int
    height: int
    outline: Box
    rooms: list[Box]
    room_names: list[str]
    walls: list[Wall]
    doors: list[Opening]
    windows: list[Opening]
    north_arrow: bool
    scale_bar: bool


def _outer_walls(rect: Box) -> list[Wall]:
    x0, y0, x1, y1 = rect
    return [
        Wall(True, y0, x0, x1, OUTER_HALF, inward=1),
        Wall(True, y1, x0, x1, OUTER_HALF, inward=-1),
        Wall(False, x0, y0, y1, OUTER_HALF, inward=1),
        Wall(False, x1, y0, y1, OUTER_HALF, inward=-1),
    ]


def _split_rooms(rect: Box, target: int, rng: random.Random) -> tuple[list[Box], list[Wall]]:
    """Recursively halve the largest room across its long side until ``target`` rooms.

    Stops early when no room is big enough to split into two ``MIN_ROOM`` rooms,
    so the caller reads the room count from the result.
    """
    rooms, walls = [rect], []
    while len(rooms) < target:
        splittable = [r for r in rooms if max(r[2] - r[0], r[3] - r[1]) >= 2 * MIN_ROOM]
        if not splittable:
            break
        room = max(splittable, key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
        rooms.remove(room)
        x0, y0, x1, y1 = room
        horizontal_cut = (y1 - y0) > (x1 - x0)
        lo, hi = (y0, y1) if horizontal_cut else (x0, x1)
        margin = max(MIN_ROOM, round(0.35 * (hi - lo)))
        cut = rng.randint(lo + margin, hi - margin)
        if horizontal_cut:
            rooms += [(x0, y0, x1, cut), (x0, cut, x1, y1)]
            walls.append(Wall(True, cut, x0, x1, INNER_HALF))
        else:
            rooms += [(x0, y0, cut, y1), (cut, y0, x1, y1)]
            walls.append(Wall(False, cut, y0, y1, INNER_HALF))
    return rooms, walls


def _free_spans(wall: Wall, walls: list[Wall], taken: list[Opening]) -> list[tuple[int, int]]:
    """Stretches of ``wall`` clear of corners, T-junctions and existing openings."""
    blocked = [(wall.lo - 1, wall.lo + CLEAR), (wall.hi - CLEAR, wall.hi + 1)]
    for other in walls:
        if other.horizontal != wall.horizontal and wall.at in (other.lo, other.hi) and wall.lo < other.at < wall.hi:
            blocked.append((other.at - CLEAR, other.at + CLEAR))
    blocked += [(o.start - CLEAR, o.start + o.length + CLEAR) for o in taken if o.wall == wall]
    spans, start = [], wall.lo
    for a, b in sorted(blocked):
        if a > start:
            spans.append((start, a))
        start = max(start, b)
    return spans


def _place_door(wall: Wall, walls: list[Wall], taken: list[Opening], rng: random.Random) -> Opening:
    """A door at one end of the wall's longest free stretch, as real plans tuck doors
    into corners; that also keeps the swing clear of the room labels in the middle.
    Outer doors always swing inwards."""
    a, b = max(_free_spans(wall, walls, taken), key=lambda s: s[1] - s[0])
    start = rng.choice((a, b - DOOR_W))
    swing = wall.inward or rng.choice((-1, 1))
    return Opening(wall, start, DOOR_W, rng.random() < 0.5, swing)


def _place_windows(outer: list[Wall], walls: list[Wall], doors: list[Opening], rng: random.Random) -> list[Opening]:
    slots = []
    for wall in outer:
        for a, b in _free_spans(wall, walls, doors):
            slots += [Opening(wall, start, WINDOW_W) for start in range(a, b - WINDOW_W + 1, WINDOW_W + 2 * CLEAR)]
    return rng.sample(slots, min(rng.randint(2, 8), len(slots)))


def _name_rooms(rooms: list[Box], rng: random.Random) -> tuple[list[Box], list[str]]:
    """Largest room is the living room, smallest the bathroom; the rest are drawn at random."""
    by_area = sorted(rooms, key=lambda r: (-(r[2] - r[0]) * (r[3] - r[1]), r))
    return by_area, ["LIVING", *rng.sample(SPARE_ROOMS, len(rooms) - 2), "BATH"]


def _sample_plan(rng: random.Random) -> Plan:
    width, height = rng.choice(PLAN_SHAPES)
    plan_w = width - 40 - rng.randint(0, width // 6)
    plan_h = height - 62 - rng.randint(0, height // 8)
    x0 = rng.randint(16, width - 16 - plan_w)
    rect = (x0, 14, x0 + plan_w, 14 + plan_h)
    rooms, inner = _split_rooms(rect, rng.randint(2, 6), rng)
    outer = _outer_walls(rect)
    walls = outer + inner
    doors: list[Opening] = []
    for wall in [*inner, rng.choice(outer)]:
        doors.append(_place_door(wall, walls, doors, rng))
    rooms, names = _name_rooms(rooms, rng)
    return Plan(
        width=width,
        height=height,
        outline=rect,
        rooms=rooms,
        room_names=names,
        walls=walls,
        doors=doors,
        windows=_place_windows(outer, walls, doors, rng),
        north_arrow=rng.random() < 0.6,
        scale_bar=rng.random() < 0.5,
    )


def _along(wall: Wall, along: int, across: int) -> tuple[int, int]:
    """Image (x, y) of a point given by its position along and across ``wall``."""
    return (along, across) if wall.horizontal else (across, along)


def _wall_box(wall: Wall, lo: int, hi: int, half: int) -> tuple[int, int, int, int]:
    """Inclusive PIL box covering ``[lo, hi]`` along the wall, ``half`` either side of it."""
    (ax, ay), (bx, by) = _along(wall, lo, wall.at - half), _along(wall, hi, wall.at + half)
    return ax, ay, bx, by


def _draw_door_swing(draw: ImageDraw.ImageDraw, door: Opening) -> None:
    """Clear the gap, then draw the open leaf and its quarter-circle swing."""
    wall, end = door.wall, door.start + door.length
    draw.rectangle(_wall_box(wall, door.start, end, wall.half), fill=PAPER)
    hinge = door.start if door.hinge_at_start else end
    hx, hy = _along(wall, hinge, wall.at)
    leaf_x, leaf_y = _along(wall, hinge, wall.at + door.swing * door.length)
    draw.line((hx, hy, leaf_x, leaf_y), fill=INK, width=2)
    angle = {(1, 0): 0, (0, 1): 90, (-1, 0): 180, (0, -1): 270}
    leaf = angle[_along(wall, 0, door.swing)]
    jamb = angle[_along(wall, 1 if door.hinge_at_start else -1, 0)]
    start, stop = (leaf, jamb) if (jamb - leaf) % 360 == 90 else (jamb, leaf)
    r = door.length
    draw.arc((hx - r, hy - r, hx + r, hy + r), start, stop, fill=INK)


def _draw_window_mark(draw: ImageDraw.ImageDraw, window: Opening) -> None:
    """Clear the wall and draw the glazing as a double thin line between jambs."""
    wall, end = window.wall, window.start + window.length
    draw.rectangle(_wall_box(wall, window.start, end, wall.half), fill=PAPER)
    for offset in (-1, 1):
        draw.line((*_along(wall, window.start, wall.at + offset), *_along(wall, end, wall.at + offset)), fill=INK)
    for jamb in (window.start, end):
        draw.line((*_along(wall, jamb, wall.at - wall.half), *_along(wall, jamb, wall.at + wall.half)), fill=INK)


def _draw_north_arrow(draw: ImageDraw.ImageDraw, plan: Plan, font: ImageFont.ImageFont) -> None:
    cx, tip = plan.width - 22, plan.height - 30
    draw.polygon([(cx, tip), (cx - 6, tip + 16), (cx, tip + 11), (cx + 6, tip + 16)], fill=INK)
    draw.text((cx - 2, tip - 12), "N", font=font, fill=INK)


def _draw_scale_bar(draw: ImageDraw.ImageDraw, plan: Plan, font: ImageFont.ImageFont) -> None:
    x0, y = plan.outline[0], plan.height - 26
    for i in range(4):
        box = (x0 + 10 * i, y, x0 + 10 * (i + 1), y + 4)
        draw.rectangle(box, fill=INK if i % 2 == 0 else PAPER, outline=INK)
    draw.text((x0 - 2, y + 7), "0", font=font, fill=INK)
    draw.text((x0 + 34, y + 7), "4m", font=font, fill=INK)


def _draw_label(draw: ImageDraw.ImageDraw, room: Box, name: str, font: ImageFont.ImageFont) -> None:
    """Centre the name in the room on a paper patch, so a door swing never garbles it."""
    _, _, w, h = draw.textbbox((0, 0), name, font=font)
    x, y = (room[0] + room[2] - w) // 2, (room[1] + room[3] - h) // 2
    draw.rectangle((x - 2, y - 1, x + w + 1, y + h), fill=PAPER)
    draw.text((x, y), name, font=font, fill=INK)


def _render_plan(plan: Plan) -> Image.Image:
    image = Image.new("RGB", (plan.width, plan.height), PAPER)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default_imagefont()  # bitmap font: identical pixels on every machine
    for wall in plan.walls:
        draw.rectangle(_wall_box(wall, wall.lo - wall.half, wall.hi + wall.half, wall.half), fill=INK)
    for door in plan.doors:
        _draw_door_swing(draw, door)
    for window in plan.windows:
        _draw_window_mark(draw, window)
    for room, name in zip(plan.rooms, plan.room_names, strict=True):
        _draw_label(draw, room, name, font)
    if plan.north_arrow:
        _draw_north_arrow(draw, plan, font)
    if plan.scale_bar:
        _draw_scale_bar(draw, plan, font)
    return image


def _plan_caption(plan: Plan, rng: random.Random) -> str:
    n, names = len(plan.rooms), ", ".join(name.lower() for name in plan.room_names)
    doors, windows = _plural(len(plan.doors), "door"), _plural(len(plan.windows), "window")
    extras = "".join(f", {item}" for item, shown in (("north arrow", plan.north_arrow), ("scale bar", plan.scale_bar)) if shown)
    templates = (
        f"an architectural floor plan drawing of a {n}-room apartment: {names}; {doors}, {windows}{extras}",
        f"floor plan, black and white line drawing, {n} rooms ({names}), {doors} and {windows}{extras}",
        f"a {n}-room apartment plan with {names}, {doors}, {windows}{extras}",
    )
    return rng.choice(templates)


def _plan_record(index: int, plan: Plan, caption: str) -> dict:
    return {
        "file_name": f"plan_{index:03d}.png",
        "text": caption,
        "kind": "drawing",
        "rooms": len(plan.rooms),
        "room_names": [name.lower() for name in plan.room_names],
        "doors": len(plan.doors),
        "windows": len(plan.windows),
        "north_arrow": plan.north_arrow,
        "scale_bar": plan.scale_bar,
        "width": plan.width,
        "height": plan.height,
    }


def generate_plans(out_dir: Path, count: int = 32, seed: int = 0) -> None:
    """Write ``count`` floor-plan line drawings and their ``metadata.jsonl``."""
    rng = random.Random(seed)
    items = []
    for index in range(count):
        plan = _sample_plan(rng)
        items.append((_plan_record(index, plan, _plan_caption(plan, rng)), _render_plan(plan)))
    _write_dataset(Path(out_dir), "plan", items)


# --------------------------------------------------------------------------- entry point


def generate_all(root: Path) -> None:
    """Regenerate both bundled sets under ``root`` (``root/facades``, ``root/plans``)."""
    root = Path(root)
    generate_facades(root / "facades")
    generate_plans(root / "plans")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the bundled synthetic datasets.")
    parser.add_argument("root", nargs="?", default="datasets", help="output root (default: datasets)")
    generate_all(Path(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()
