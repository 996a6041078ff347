"""The pointing game on the shipped toy model: the location maps find the asked object."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm.mechanism import pointing_game
from hooked_mllm.mechanism.pointing import asked_object


@pytest.fixture(scope="module")
def toy_model():
    from hooked_mllm import toy

    return toy.load("toy-llava")


@pytest.fixture
def one_thread():
    """The toy model is tiny: one thread avoids thread contention on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_asked_object_is_the_one_the_question_names():
    from hooked_mllm.toy import World

    for scene in World(seed=3).sample(30):
        for qa in scene.questions:
            obj = asked_object(scene, qa)
            if qa.qtype == "count" or (qa.qtype == "exist" and qa.answer == "no"):
                assert obj is None
                continue
            assert obj is not None
            answer = {"color": obj.color, "shape": obj.shape, "position": obj.position, "exist": "yes"}[
                qa.qtype
            ]
            assert qa.answer == answer


def test_pointing_game_on_unseen_scenes(toy_model, one_thread):
    from hooked_mllm.toy import World

    scenes = World(seed=7).sample(60)  # world seeds below 10,000 are never used in training
    result = pointing_game(
        toy_model, scenes, methods=["heads_top", "heads_all", "attention"], batch_size=32, world_seed=7
    )
    assert result.n_questions >= 300
    assert 0.4 < result.random_object < 0.8 and 0.05 < result.random_patch < 0.2
    best, accuracy = result.best()
    assert accuracy >= result.random_object + 0.3, result.table()
    assert result.model_accuracy > 0.9
    assert "random object" in result.table()
