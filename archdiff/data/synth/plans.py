"""Floor plans: black-and-white line drawings of small apartments, with captions that count what is drawn.

Rooms come from recursive splits of the outline; doors and windows are placed only on free wall
stretches, so every one drawn is counted in the caption and the metadata.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from archdiff.data.synth.common import Box, generate, plural

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
    doors, windows = plural(len(plan.doors), "door"), plural(len(plan.windows), "window")
    extras = "".join(f", {item}" for item, shown in (("north arrow", plan.north_arrow), ("scale bar", plan.scale_bar)) if shown)
    templates = (
        f"an architectural floor plan drawing of a {n}-room apartment: {names}; {doors}, {windows}{extras}",
        f"floor plan, black and white line drawing, {n} rooms ({names}), {doors} and {windows}{extras}",
        f"a {n}-room apartment plan with {names}, {doors}, {windows}{extras}",
    )
    return rng.choice(templates)


def _plan_columns(plan: Plan) -> dict:
    return {
        "rooms": len(plan.rooms),
        "room_names": [name.lower() for name in plan.room_names],
        "doors": len(plan.doors),
        "windows": len(plan.windows),
        "north_arrow": plan.north_arrow,
        "scale_bar": plan.scale_bar,
        "width": plan.width,
        "height": plan.height,
    }


def _draw_plan(rng: random.Random) -> tuple[str, dict, Image.Image]:
    """One plan: its parameters, then its caption; the drawing itself takes nothing from the seed."""
    plan = _sample_plan(rng)
    return _plan_caption(plan, rng), _plan_columns(plan), _render_plan(plan)


def generate_plans(out_dir: Path, count: int = 32, seed: int = 0) -> None:
    """Write ``count`` floor-plan line drawings and their ``metadata.jsonl``."""
    generate(out_dir, "plan", "drawing", count, seed, _draw_plan)
