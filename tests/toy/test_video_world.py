"""The toy video world: motion, questions and evidence frames against the drawn pixels (recomputed here from
the frames alone), and the scoring of per-frame maps against a brute-force count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hooked_mllm.toy.video import FRAMES, VIDEO_QTYPES, VideoQA, VideoWorld, cell_token, neighbours
from hooked_mllm.toy.video_eval import point
from hooked_mllm.toy.world import CELL, COLORS, GRID, POSITIONS


def _occupied(frame) -> dict[tuple[int, int], np.ndarray]:
    """Cells with any non-black pixel, mapped to the cell's 16 x 16 block (read from the pixels only)."""
    pixels = np.asarray(frame).astype(int)
    out = {}
    for r, c in itertools.product(range(GRID), range(GRID)):
        block = pixels[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL]
        if block.any():
            out[(r, c)] = block
    return out


def _color_of(block: np.ndarray) -> str:
    lit = block[block.any(axis=-1)]
    mean = lit.mean(axis=0)
    return min(COLORS, key=lambda name: float(np.abs(mean - np.array(COLORS[name])).sum()))


def _position_cell(word: str) -> tuple[int, int]:
    return next((r, c) for r, row in enumerate(POSITIONS) for c, w in enumerate(row) if w == word)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 9_999), index=st.integers(0, 10_000), frames=st.sampled_from([2, 3, 4]))
def test_the_pixels_show_one_object_stepping_to_a_neighbour_and_the_answers_follow(seed, index, frames):
    clip = VideoWorld(seed, frames=frames).clip(index)
    assert len(clip.frames) == frames and 1 <= len(clip.tracks) <= 3
    seen = [_occupied(f) for f in clip.frames]
    assert all(len(s) == len(clip.tracks) for s in seen)  # no object leaves or overlaps another
    moved_from = set(seen[0]) - set(seen[-1])
    assert all(set(seen[t - 1]) ^ set(seen[t]) for t in range(1, frames))  # something moves every frame
    still = set.intersection(*(set(s) for s in seen))
    assert len(still) == len(clip.tracks) - 1
    path = []
    for s in seen:
        (cell,) = set(s) - still
        path.append(cell)
    assert len(set(path)) == frames and path[0] in moved_from
    for a, b in itertools.pairwise(path):
        assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1
    blocks = [seen[t][path[t]] for t in range(frames)]
    assert all(np.array_equal(blocks[0], b) for b in blocks[1:])  # the same look in every frame
    mover = clip.tracks[clip.mover]
    assert list(mover.cells) == path and mover.moves
    assert [t.cells[0] for t in clip.tracks] == sorted(t.cells[0] for t in clip.tracks)
    for qa in clip.questions:
        track = clip.tracks[qa.track]
        if qa.qtype == "moved":
            assert qa.answer == f"{_color_of(blocks[0])} {track.shape}" and qa.track == clip.mover
            assert qa.frame is None and qa.evidence == tuple((t, *path[t]) for t in range(frames))
            continue
        frame = 0 if qa.qtype == "first" else frames - 1
        cell = _position_cell(qa.answer)
        assert qa.frame == frame and cell in seen[frame]
        assert _color_of(seen[frame][cell]) == track.color and track.name in qa.question
        if qa.track == clip.mover:
            assert qa.evidence == ((frame, *cell),) and qa.decisive
        else:
            assert qa.evidence == tuple((t, *cell) for t in range(frames)) and not qa.decisive
    assert [qa.qtype for qa in clip.questions].count("moved") == 1
    assert {qa.qtype for qa in clip.questions} == set(VIDEO_QTYPES)


def test_clips_are_deterministic_and_streams_agree():
    world = VideoWorld(seed=4)
    streamed = world.sample(3) + world.sample(2)
    again = [VideoWorld(seed=4).clip(i) for i in range(5)]
    for a, b in zip(streamed, again):
        assert [np.asarray(f).tobytes() for f in a.frames] == [np.asarray(f).tobytes() for f in b.frames]
        assert a.questions == b.questions
    assert [np.asarray(f).tobytes() for f in VideoWorld(seed=5).clip(0).frames] != [
        np.asarray(f).tobytes() for f in again[0].frames
    ]
    assert len(VideoWorld().clip(0).frames) == FRAMES


def test_bad_worlds_are_refused():
    with pytest.raises(ValueError, match="frames must be between 2"):
        VideoWorld(frames=1)
    with pytest.raises(ValueError, match="min_objects"):
        VideoWorld(min_objects=0)


def test_cell_tokens_and_neighbours_by_arithmetic():
    tokens = [cell_token(t, (r, c)) for t in range(3) for r in range(GRID) for c in range(GRID)]
    assert tokens == list(range(27))
    for r, c in itertools.product(range(GRID), range(GRID)):
        expected = {(a, b) for a in range(GRID) for b in range(GRID) if abs(a - r) + abs(b - c) == 1}
        assert set(neighbours((r, c))) == expected


def _brute_force(values: np.ndarray, qa: VideoQA) -> dict:
    """The scores of :func:`point` by enumeration: every (frame, cell) compared with every other."""
    time = values.shape[0]
    cells = [(t, r, c) for t in range(time) for r in range(GRID) for c in range(GRID)]
    best = max(cells, key=lambda k: (values[k], -cells.index(k)))
    cell_of = {t: (r, c) for t, r, c in qa.evidence}
    asked = [qa.frame] if qa.frame is not None else range(time)
    cell_ok = True
    for t in asked:
        in_frame = [(r, c) for r in range(GRID) for c in range(GRID)]
        top = max(in_frame, key=lambda k: (values[t][k], -in_frame.index(k)))
        cell_ok &= top == cell_of.get(t, qa.evidence[0][1:])
    return {
        "joint": best in qa.evidence,
        "cell": cell_ok,
        "frame": (best[0] == qa.frame) if len(qa.evidence) == 1 else None,
    }


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), index=st.integers(0, 500))
def test_point_agrees_with_a_brute_force_count(seed, index):
    clip = VideoWorld(seed % 10_000).clip(index)
    rng = np.random.default_rng(seed)
    for qa in clip.questions:
        values = rng.normal(size=(len(clip.frames), GRID, GRID))
        if rng.random() < 0.5:  # often put the peak on the evidence
            t, r, c = qa.evidence[int(rng.integers(len(qa.evidence)))]
            values[t, r, c] = 10.0
        assert point(values, qa) == _brute_force(values, qa)
