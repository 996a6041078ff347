"""The toy world is deterministic; annotations agree with the drawn pixels, answers with the objects."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hooked_mllm.toy.world import (
    CELL,
    COLORS,
    GRID,
    IMAGE_SIZE,
    NUMBERS,
    PATCH,
    PATCH_GRID,
    POSITIONS,
    QTYPES,
    SHAPES,
    World,
    caption_for,
    cell_patch_indices,
)

N = 150


@pytest.fixture(scope="module")
def scenes():
    return World(seed=7).sample(N)


def _key(scene):
    return (
        np.asarray(scene.image).tobytes(),
        [(o.color, o.shape, o.cell, o.patch_indices, o.mask.tobytes()) for o in scene.objects],
        scene.questions,
        scene.caption,
        scene.caption_colored,
    )


def test_deterministic_per_seed(scenes):
    again = World(seed=7).sample(N)
    assert [_key(s) for s in scenes] == [_key(s) for s in again]
    other = World(seed=8).sample(N)
    assert [_key(s) for s in scenes] != [_key(s) for s in other]


def test_stream_and_index_agree(scenes):
    world = World(seed=7)
    first, second = world.sample(5), world.sample(5)
    it = iter(World(seed=7))
    streamed = [next(it) for _ in range(10)]
    assert [_key(s) for s in first + second] == [_key(s) for s in scenes[:10]] == [_key(s) for s in streamed]
    assert _key(World(seed=7).scene(42)) == _key(scenes[42])
    assert [s.index for s in first + second] == list(range(10))


def test_geometry_constants():
    assert IMAGE_SIZE == GRID * CELL and PATCH_GRID * PATCH == IMAGE_SIZE and CELL % PATCH == 0
    assert cell_patch_indices(0, 0) == (0, 1, 6, 7)
    assert cell_patch_indices(2, 2) == (28, 29, 34, 35)


def test_scene_structure(scenes):
    counts = set()
    for s in scenes:
        assert s.image.mode == "RGB" and s.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert 1 <= len(s.objects) <= 3
        counts.add(len(s.objects))
        cells = [o.cell for o in s.objects]
        assert cells == sorted(cells) and len(set(cells)) == len(cells), "one object per cell, reading order"
        assert len({(o.color, o.shape) for o in s.objects}) == len(s.objects)
        for o in s.objects:
            assert o.color in COLORS and o.shape in SHAPES
            assert o.position == POSITIONS[o.cell[0]][o.cell[1]]
    assert counts == {1, 2, 3}


def test_masks_and_patches_match_pixels(scenes):
    for s in scenes:
        pixels = np.asarray(s.image).astype(int)
        foreground = pixels.sum(-1) > 0  # background is black, every colour is far from it
        union = np.zeros_like(foreground)
        for o in s.objects:
            assert o.mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and o.mask.dtype == bool and o.mask.any()
            assert not (union & o.mask).any(), "masks are disjoint"
            union |= o.mask
            # The object's pixels carry (a shade of) its colour and lie inside its cell.
            r, c = o.cell
            cell = np.zeros_like(foreground)
            cell[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = True
            assert not (o.mask & ~cell).any()
            mean = pixels[o.mask].mean(0)
            nearest = min(COLORS, key=lambda k: np.abs(np.array(COLORS[k]) - mean).sum())
            assert nearest == o.color
            # Patches from the image array alone: the patches holding non-background pixels of this cell.
            fg = foreground & cell
            patch_hits = fg.reshape(PATCH_GRID, PATCH, PATCH_GRID, PATCH).any(axis=(1, 3)).reshape(-1)
            assert tuple(np.flatnonzero(patch_hits)) == o.patch_indices
            assert set(o.patch_indices) <= set(cell_patch_indices(r, c))
        assert (union == foreground).all(), "every drawn pixel belongs to exactly one object's mask"


def test_answers_agree_with_objects(scenes):
    seen = set()
    for s in scenes:
        objs = s.objects
        for qa in s.questions:
            seen.add(qa.qtype)
            assert qa.qtype in QTYPES and len(qa.answer.split()) == 1
            words = qa.question.split()
            if qa.qtype == "color":
                (match,) = [o for o in objs if o.shape == words[4]]  # unambiguous: exactly one
                assert qa.answer == match.color
            elif qa.qtype == "shape":
                (match,) = [o for o in objs if o.color == words[4]]
                assert qa.answer == match.shape
            elif qa.qtype == "count":
                assert qa.answer == NUMBERS[len(objs)]
            elif qa.qtype == "position":
                (match,) = [o for o in objs if (o.color, o.shape) == (words[3], words[4])]
                assert qa.answer == match.position
            elif qa.qtype == "exist":
                present = any((o.color, o.shape) == (words[3], words[4]) for o in objs)
                assert qa.answer == ("yes" if present else "no")
        assert sorted(qa.answer for qa in s.questions_of("exist")) == ["no", "yes"], "balanced yes/no"
        assert len(s.questions_of("position")) == len(objs)
        assert len(s.questions_of("count")) == 1
    assert seen == set(QTYPES)


def test_captions(scenes):
    for s in scenes:
        assert s.caption == caption_for(s.objects, colored=False)
        assert s.caption_colored == caption_for(s.objects, colored=True)
    obj = {o.shape: o for s in scenes for o in s.objects}
    assert caption_for([obj["circle"]], colored=False) == "a circle"
    pair = [obj["circle"], obj["square"]]
    expected = f"a {obj['circle'].color} circle and a {obj['square'].color} square"
    assert caption_for(pair, colored=True) == expected
    trio = [obj["circle"], obj["square"], obj["triangle"]]
    assert caption_for(trio, colored=False) == "a circle , a square and a triangle"


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_objects"):
        World(seed=0, max_objects=5)
    with pytest.raises(ValueError, match="min_objects"):
        World(seed=0, min_objects=0)


def test_questions_rng_is_local():
    state = random.getstate()
    World(seed=3).sample(3)
    assert random.getstate() == state
