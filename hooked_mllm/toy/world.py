"""A seeded synthetic visual world: small images of coloured shapes on a grid, with exact annotations.

Purpose:
    Ground truth for the toy LLaVA that the library ships (:mod:`hooked_mllm.toy.training` trains on it,
    :mod:`hooked_mllm.toy.evaluation` scores on it) and for tests and tutorials that need to know *exactly*
    which image tokens show which object.

Geometry:
    An image is ``GRID x GRID`` cells of ``CELL`` pixels (3 x 3 cells of 16 px: 48 x 48 RGB). The vision
    tower cuts it into ``PATCH`` = 8 px patches, so every cell is exactly 2 x 2 patches and the patch grid is
    ``PATCH_GRID x PATCH_GRID`` = 6 x 6 = 36 patches, flattened row-major. Each object sits in one cell and
    its pixels lie only in that cell's four patches; :attr:`SceneObject.patch_indices` lists the patches its
    pixels touch (the four of its cell for 97 % of objects; a small off-centre triangle may touch three).
    The background is black, which the toy processor maps to pixel value 0.

Contents:
    :data:`COLORS`, :data:`SHAPES`, :data:`POSITIONS`, :data:`NUMBERS`, :data:`QTYPES` vocabularies;
    :class:`SceneObject`, :class:`QA`, :class:`Scene` frozen records; :class:`World` the generator;
    :func:`caption_for` the canonical caption of a list of objects.

Examples:
    >>> from hooked_mllm.toy.world import World
    >>> scene = World(seed=0).sample(1)[0]
    >>> scene.image.size, scene.caption  # doctest: +SKIP
    ((48, 48), 'a red circle and a blue square')
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CELL",
    "COLORS",
    "GRID",
    "IMAGE_SIZE",
    "NUMBERS",
    "PATCH",
    "PATCH_GRID",
    "POSITIONS",
    "QA",
    "QTYPES",
    "SHAPES",
    "Scene",
    "SceneObject",
    "World",
    "caption_for",
    "cell_patch_indices",
]

GRID = 3
CELL = 16
PATCH = 8
IMAGE_SIZE = GRID * CELL
PATCH_GRID = IMAGE_SIZE // PATCH
BACKGROUND = (0, 0, 0)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 190),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top-left", "top", "top-right"),
    ("left", "center", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three")
QTYPES: tuple[str, ...] = ("color", "shape", "count", "position", "exist")
"""Question types; captions are scored separately (see :mod:`hooked_mllm.toy.evaluation`)."""


def cell_patch_indices(row: int, col: int) -> tuple[int, ...]:
    """Indices into the flattened (row-major) patch grid of the patches covering cell ``(row, col)``."""
    per = CELL // PATCH
    return tuple((row * per + dr) * PATCH_GRID + col * per + dc for dr in range(per) for dc in range(per))


@dataclass(frozen=True, kw_only=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        color: colour name, a key of :data:`COLORS`.
        shape: shape name, one of :data:`SHAPES`.
        cell: ``(row, col)`` of its grid cell.
        position: one-word position name of the cell (``"top-left"``, ``"center"``, ...).
        mask: boolean ``(IMAGE_SIZE, IMAGE_SIZE)`` array, True on the object's pixels.
        patch_indices: sorted indices into the flattened row-major patch grid of the patches its pixels touch.
    """

    color: str
    shape: str
    cell: tuple[int, int]
    position: str
    mask: np.ndarray
    patch_indices: tuple[int, ...]

    @property
    def name(self) -> str:
        """``"red circle"``."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class QA:
    """A question with a one-word answer. ``qtype`` is one of :data:`QTYPES`."""

    question: str
    answer: str
    qtype: str


@dataclass(frozen=True, kw_only=True)
class Scene:
    """An image with its objects (in reading order), questions and captions.

    Attributes:
        image: RGB PIL image of ``IMAGE_SIZE x IMAGE_SIZE`` pixels.
        objects: the objects in reading order (row-major by cell).
        questions: every unambiguous question about the scene (see :meth:`World.questions_for`).
        caption: colour-free caption naming shapes only, ``"a circle and a square"`` (toy-llava's style).
        caption_colored: caption with colours, ``"a red circle and a blue square"`` (toy-llava-ft's style).
        index: the scene's index in its world's stream.
    """

    image: Image.Image
    objects: tuple[SceneObject, ...]
    questions: tuple[QA, ...]
    caption: str
    caption_colored: str
    index: int

    def questions_of(self, qtype: str) -> list[QA]:
        """The scene's questions of one type."""
        return [qa for qa in self.questions if qa.qtype == qtype]


def caption_for(objects: tuple[SceneObject, ...] | list[SceneObject], *, colored: bool) -> str:
    """Canonical caption: objects in the given order, ``"a X , a Y and a Z"`` (tokens are space separated)."""
    names = [obj.name if colored else obj.shape for obj in objects]
    parts = [f"a {n}" for n in names]
    if len(parts) == 1:
        return parts[0]
    return " , ".join(parts[:-1]) + " and " + parts[-1]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


class World:
    """Deterministic generator of :class:`Scene` records.

    Scene ``i`` of ``World(seed=s)`` depends only on ``(s, i)``, so ``World(seed=s).sample(n)`` always returns
    the same scenes and iteration continues the same stream.

    Args:
        seed: seed of the stream.
        min_objects: fewest objects per scene.
        max_objects: most objects per scene (inclusive, at most ``GRID * GRID``).
        jitter: if True, shape size, offset inside the cell and colour shade vary slightly per object.

    Examples:
        >>> world = World(seed=0)
        >>> scenes = world.sample(8)
        >>> [qa.answer for qa in scenes[0].questions_of("count")]  # doctest: +SKIP
        ['two']
    """

    def __init__(self, seed: int = 0, *, min_objects: int = 1, max_objects: int = 3, jitter: bool = True):
        if not 1 <= min_objects <= max_objects <= min(GRID * GRID, len(NUMBERS) - 1):
            raise ValueError(
                f"Need 1 <= min_objects <= max_objects <= {min(GRID * GRID, len(NUMBERS) - 1)}, "
                f"got min_objects={min_objects}, max_objects={max_objects}."
            )
        self.seed = seed
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.jitter = jitter
        self._next = 0

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, min_objects={self.min_objects}, max_objects={self.max_objects})"

    def __iter__(self) -> Iterator[Scene]:
        while True:
            yield self.scene(self._next)
            self._next += 1

    def sample(self, n: int) -> list[Scene]:
        """The next ``n`` scenes of the stream (the first call returns scenes ``0 .. n-1``)."""
        out = [self.scene(self._next + i) for i in range(n)]
        self._next += n
        return out

    def scene(self, index: int) -> Scene:
        """Scene number ``index`` of this world (independent of the stream position)."""
        rng = random.Random(f"hooked_mllm.toy.world:{self.seed}:{index}")
        n = rng.randint(self.min_objects, self.max_objects)
        cells = sorted(rng.sample(range(GRID * GRID), n))
        combos = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        objects = []
        for cell, (color, shape) in zip(cells, combos):
            row, col = divmod(cell, GRID)
            objects.append(self._draw_object(rng, image, row, col, color, shape))
        objects_t = tuple(objects)
        return Scene(
            image=image,
            objects=objects_t,
            questions=tuple(self.questions_for(objects_t, rng)),
            caption=caption_for(objects_t, colored=False),
            caption_colored=caption_for(objects_t, colored=True),
            index=index,
        )

    def _draw_object(
        self, rng: random.Random, image: Image.Image, row: int, col: int, color: str, shape: str
    ) -> SceneObject:
        size = rng.randint(10, 13) if self.jitter else 12
        slack = CELL - 2 - size  # keep one background pixel on each side of the cell
        off_x = 1 + (rng.randint(0, slack) if self.jitter else slack // 2)
        off_y = 1 + (rng.randint(0, slack) if self.jitter else slack // 2)
        x0, y0 = col * CELL + off_x, row * CELL + off_y
        box = (x0, y0, x0 + size - 1, y0 + size - 1)
        rgb: tuple[int, ...] = COLORS[color]
        if self.jitter:
            rgb = tuple(int(min(255, max(0, v + rng.randint(-20, 20)))) for v in rgb)
        layer = Image.new("L", image.size, 0)
        _draw_shape(ImageDraw.Draw(layer), shape, box, fill=255)
        mask = np.asarray(layer) > 0
        image.paste(rgb, mask=layer)
        rows, cols = np.nonzero(mask)
        patches = sorted({int(r // PATCH) * PATCH_GRID + int(c // PATCH) for r, c in zip(rows, cols)})
        mask.setflags(write=False)
        return SceneObject(
            color=color,
            shape=shape,
            cell=(row, col),
            position=POSITIONS[row][col],
            mask=mask,
            patch_indices=tuple(patches),
        )

    @staticmethod
    def questions_for(objects: tuple[SceneObject, ...], rng: random.Random) -> list[QA]:
        """All unambiguous questions about ``objects``.

        - ``color``: "what color is the {shape} ?" for each shape that occurs exactly once;
        - ``shape``: "what shape is the {color} object ?" for each colour that occurs exactly once;
        - ``count``: "how many objects ?" -> "one" / "two" / "three";
        - ``position``: "where is the {color} {shape} ?" -> one of :data:`POSITIONS` for each object;
        - ``exist``: "is there a {color} {shape} ?" once with answer "yes" and once with "no" (balanced).
        """
        qas: list[QA] = []
        shapes = [o.shape for o in objects]
        colors = [o.color for o in objects]
        for o in objects:
            if shapes.count(o.shape) == 1:
                qas.append(QA(f"what color is the {o.shape} ?", o.color, "color"))
        for o in objects:
            if colors.count(o.color) == 1:
                qas.append(QA(f"what shape is the {o.color} object ?", o.shape, "shape"))
        qas.append(QA("how many objects ?", NUMBERS[len(objects)], "count"))
        for o in objects:
            qas.append(QA(f"where is the {o.name} ?", o.position, "position"))
        present = {(o.color, o.shape) for o in objects}
        yes = rng.choice(objects)
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        # Half the absent objects share a colour or shape with a present one, so "no" needs binding.
        near = [(c, s) for c, s in absent if c in colors or s in shapes]
        no_c, no_s = rng.choice(near if near and rng.random() < 0.5 else absent)
        qas.append(QA(f"is there a {yes.name} ?", "yes", "exist"))
        qas.append(QA(f"is there a {no_c} {no_s} ?", "no", "exist"))
        return qas
