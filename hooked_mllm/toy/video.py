"""A seeded toy *video* world: short clips of the toy world in which one object moves from cell to cell.

Purpose:
    Ground truth for the toy video model ``toy-video`` (:mod:`hooked_mllm.toy.video_model`) and for scoring
    per-frame tools on video: every clip knows each object's cell in every frame, and every question knows
    which frame and which cell hold its evidence.

Geometry:
    A clip is :data:`FRAMES` frames of the still world (:mod:`hooked_mllm.toy.world`: 48 x 48 RGB, 3 x 3
    cells of 16 px). It holds 1-3 objects (distinct colour and shape pairs). Exactly one of them, the
    *mover*, steps to a neighbouring cell (up, down, left or right) at every frame and never returns to a
    cell it left; the others stay where they are, on cells the mover never visits. An object looks the same
    in every frame (same size, offset inside its cell and colour shade). LLaVA-OneVision pools each frame's
    6 x 6 patch map 2x, so each video token of a frame is one cell: frame ``t``, cell ``(r, c)`` is video
    token ``t * 9 + r * 3 + c``.

Questions (:data:`VIDEO_QTYPES`):

    ========  ==================================  =====================  ==================================
    qtype     question                            answer                 evidence
    ========  ==================================  =====================  ==================================
    first     ``where is the red circle first ?``  its position, frame 0  frame 0, its cell there
    last      ``where is the red circle last ?``   its position, last     the last frame, its cell there
    moved     ``which object moved ?``             ``red circle``         every frame, the mover's cell
    ========  ==================================  =====================  ==================================

    ``first`` and ``last`` are asked about every object; about a still object every frame shows the answer,
    about the mover only the frame named does (:attr:`VideoQA.decisive`).

Examples:
    >>> clip = VideoWorld(seed=0).clip(0)
    >>> len(clip.frames), clip.frames[0].size
    (3, (48, 48))
    >>> mover = clip.tracks[clip.mover]
    >>> len(set(mover.cells)) == 3
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from hooked_mllm.toy.world import BACKGROUND, COLORS, GRID, IMAGE_SIZE, POSITIONS, SHAPES, SceneObject, World

__all__ = [
    "FRAMES",
    "VIDEO_QTYPES",
    "Clip",
    "Track",
    "VideoQA",
    "VideoWorld",
    "cell_token",
    "neighbours",
]

FRAMES = 3
"""Frames per clip (the default of :class:`VideoWorld`)."""

VIDEO_QTYPES: tuple[str, ...] = ("first", "last", "moved")
"""Question types of the video world, in this order everywhere (weights, reports)."""


def neighbours(cell: tuple[int, int]) -> list[tuple[int, int]]:
    """The cells one step up, down, left or right of ``cell`` inside the grid, in that order.

    Examples:
        >>> neighbours((0, 0))
        [(1, 0), (0, 1)]
    """
    r, c = cell
    steps = ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
    return [(a, b) for a, b in steps if 0 <= a < GRID and 0 <= b < GRID]


def cell_token(frame: int, cell: tuple[int, int]) -> int:
    """Index of ``(frame, cell)`` among a clip's video tokens (the trailing newline excluded).

    Examples:
        >>> cell_token(2, (1, 0))
        21
    """
    return frame * GRID * GRID + cell[0] * GRID + cell[1]


@dataclass(frozen=True, kw_only=True)
class Track:
    """One object of a clip, frame by frame.

    Attributes:
        color: colour name, a key of :data:`~hooked_mllm.toy.world.COLORS`.
        shape: shape name.
        cells: its ``(row, col)`` in each frame.
        objects: its :class:`~hooked_mllm.toy.world.SceneObject` in each frame (mask, patch indices).
    """

    color: str
    shape: str
    cells: tuple[tuple[int, int], ...]
    objects: tuple[SceneObject, ...]

    @property
    def name(self) -> str:
        """``"red circle"``."""
        return f"{self.color} {self.shape}"

    @property
    def moves(self) -> bool:
        """True if its cell changes between frames."""
        return len(set(self.cells)) > 1

    def position(self, frame: int) -> str:
        """One-word position of its cell in ``frame`` (``"top-left"``, ...)."""
        r, c = self.cells[frame]
        return POSITIONS[r][c]


@dataclass(frozen=True, kw_only=True)
class VideoQA:
    """A question about a clip with its answer and where its evidence lies.

    Attributes:
        question, answer, qtype: the text, the answer words and one of :data:`VIDEO_QTYPES`.
        track: index of the object asked about in :attr:`Clip.tracks`.
        frame: the frame the question names (0 for ``first``, the last for ``last``; None for ``moved``).
        evidence: ``(frame, row, col)`` of the object in every frame that shows the answer: the named frame
            for a moving object's ``first`` / ``last``, every frame otherwise.
    """

    question: str
    answer: str
    qtype: str
    track: int
    frame: int | None
    evidence: tuple[tuple[int, int, int], ...]

    @property
    def decisive(self) -> bool:
        """True if exactly one frame shows the answer (a moving object's ``first`` / ``last``)."""
        return len(self.evidence) == 1


@dataclass(frozen=True, kw_only=True)
class Clip:
    """A clip of the video world.

    Attributes:
        frames: the RGB frames (PIL, 48 x 48 each).
        tracks: the objects, in reading order of their first-frame cells.
        mover: index of the one object that moves.
        questions: every question about the clip (see :meth:`VideoWorld.questions_for`).
        index: the clip's index in its world's stream.
    """

    frames: tuple[Image.Image, ...]
    tracks: tuple[Track, ...]
    mover: int
    questions: tuple[VideoQA, ...]
    index: int

    def questions_of(self, qtype: str) -> list[VideoQA]:
        """The clip's questions of one type."""
        return [qa for qa in self.questions if qa.qtype == qtype]


class VideoWorld:
    """Deterministic generator of :class:`Clip` records.

    Clip ``i`` of ``VideoWorld(seed=s)`` depends only on ``(s, i)`` (and the frame and object counts).

    Args:
        seed: seed of the stream (training uses seeds from 20,000; evaluate below 10,000).
        frames: frames per clip (at least 2).
        min_objects: fewest objects per clip (at least 1).
        max_objects: most objects per clip (inclusive; at most ``GRID * GRID - frames + 1``).

    Examples:
        >>> clips = VideoWorld(seed=3).sample(2)
        >>> [qa.qtype for qa in clips[0].questions][-1]
        'moved'
    """

    def __init__(self, seed: int = 0, *, frames: int = FRAMES, min_objects: int = 1, max_objects: int = 3):
        if frames < 2 or frames > GRID * GRID:
            raise ValueError(
                f"frames must be between 2 and {GRID * GRID} (a clip needs motion), got {frames}."
            )
        most = min(3, GRID * GRID - frames + 1)
        if not 1 <= min_objects <= max_objects <= most:
            raise ValueError(
                f"Need 1 <= min_objects <= max_objects <= {most}, got min_objects={min_objects}, "
                f"max_objects={max_objects}."
            )
        self.seed = seed
        self.frames = frames
        self.min_objects = min_objects
        self.max_objects = max_objects
        self._next = 0
        self._painter = World(seed)

    def __repr__(self) -> str:
        return f"VideoWorld(seed={self.seed}, frames={self.frames})"

    def __iter__(self) -> Iterator[Clip]:
        while True:
            yield self.clip(self._next)
            self._next += 1

    def sample(self, n: int) -> list[Clip]:
        """The next ``n`` clips of the stream (the first call returns clips ``0 .. n-1``)."""
        out = [self.clip(self._next + i) for i in range(n)]
        self._next += n
        return out

    def _path(self, rng: random.Random) -> list[tuple[int, int]]:
        while True:  # a self-avoiding walk; retried in the rare dead end (only for long clips)
            path = [divmod(rng.randrange(GRID * GRID), GRID)]
            while len(path) < self.frames:
                free = [c for c in neighbours(path[-1]) if c not in path]
                if not free:
                    break
                path.append(rng.choice(free))
            if len(path) == self.frames:
                return path

    def clip(self, index: int) -> Clip:
        """Clip number ``index`` of this world (independent of the stream position)."""
        key = f"hooked_mllm.toy.video:{self.seed}:{self.frames}:{index}"
        rng = random.Random(key)
        n = rng.randint(self.min_objects, self.max_objects)
        combos = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
        path = self._path(rng)
        rest = [divmod(k, GRID) for k in range(GRID * GRID) if divmod(k, GRID) not in path]
        still = rng.sample(rest, n - 1)
        placed = [tuple(path)] + [(cell,) * self.frames for cell in still]
        order = sorted(range(n), key=lambda k: placed[k][0])  # reading order of the first frame
        cells = [placed[k] for k in order]
        mover = order.index(0)
        frames, per_frame = [], []
        for t in range(self.frames):
            image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
            objs = []
            for k, (color, shape) in enumerate(combos[i] for i in order):
                look = random.Random(f"{key}:object:{k}")  # the same draws every frame: the same look
                row, col = cells[k][t]
                objs.append(self._painter._draw_object(look, image, row, col, color, shape))
            frames.append(image)
            per_frame.append(objs)
        tracks = tuple(
            Track(
                color=combos[i][0],
                shape=combos[i][1],
                cells=cells[k],
                objects=tuple(per_frame[t][k] for t in range(self.frames)),
            )
            for k, i in enumerate(order)
        )
        return Clip(
            frames=tuple(frames),
            tracks=tracks,
            mover=mover,
            questions=tuple(self.questions_for(tracks, mover)),
            index=index,
        )

    @staticmethod
    def questions_for(tracks: tuple[Track, ...], mover: int) -> list[VideoQA]:
        """Every question about a clip: ``first`` and ``last`` for each object, then ``moved``."""
        frames = len(tracks[0].cells)
        last = frames - 1

        def where(k: int, t: int) -> tuple[tuple[int, int, int], ...]:
            track = tracks[k]
            shown = [t] if track.moves else range(frames)
            return tuple((f, *track.cells[f]) for f in shown)

        qas = []
        for k, track in enumerate(tracks):
            qas.append(
                VideoQA(
                    question=f"where is the {track.name} first ?",
                    answer=track.position(0),
                    qtype="first",
                    track=k,
                    frame=0,
                    evidence=where(k, 0),
                )
            )
            qas.append(
                VideoQA(
                    question=f"where is the {track.name} last ?",
                    answer=track.position(last),
                    qtype="last",
                    track=k,
                    frame=last,
                    evidence=where(k, last),
                )
            )
        moving = tracks[mover]
        qas.append(
            VideoQA(
                question="which object moved ?",
                answer=moving.name,
                qtype="moved",
                track=mover,
                frame=None,
                evidence=tuple((f, *moving.cells[f]) for f in range(frames)),
            )
        )
        return qas
