"""The concept pipeline on the toy pair, where the truth is known; numbers printed for the docs."""

from __future__ import annotations

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning

from hooked_mllm.concepts import (
    Sample,
    analyze_shift,
    attribute_recovery,
    evaluate_steering,
    extract,
    make_decomposer,
    split_by,
)
from hooked_mllm.toy.world import World


@pytest.fixture(scope="module")
def models():
    from hooked_mllm import toy

    return toy.load("toy-llava"), toy.load("toy-llava-ft")


def one_object_scenes(n, seed=31):
    return World(seed=seed, max_objects=1).sample(n)


def test_concepts_recover_colour(models):
    model, _ = models
    scenes = one_object_scenes(150)
    data = [Sample(str(s.index), s.image, s.questions_of("color")[0].question) for s in scenes]
    feats = extract(
        model, data, "blocks.3.hook_resid_post", "last", batch_size=50, progress=False, predict=False
    )
    colours = [s.objects[0].color for s in scenes]
    scores = {}
    for method in ("seminmf", "sparse", "dictlearn", "kmeans", "pca", "ica", "topnorm"):
        params = {} if method == "topnorm" else {"random_state": 0}
        dec = make_decomposer(method, n_components=5, **params)
        with warnings.catch_warnings():  # the lasso transform of the reference variant warns on convergence
            warnings.simplefilter("ignore", ConvergenceWarning)
            scores[method] = attribute_recovery(dec.fit_transform(feats.features.numpy()), colours)["nmi"]
    print("NMI(strongest concept, colour):", {k: round(v, 3) for k, v in scores.items()})
    assert scores["seminmf"] > 0.8 and scores["kmeans"] > 0.8 and scores["sparse"] > 0.8


def test_shift_between_toy_llava_and_ft(models):
    model, ft = models
    scenes = World(seed=32).sample(150)
    data = [Sample(str(s.index), s.image, "describe the image .") for s in scenes]
    a = extract(model, data, "blocks.3.hook_resid_post", "last", batch_size=50, progress=False, predict=False)
    b = extract(ft, data, "blocks.3.hook_resid_post", "last", batch_size=50, progress=False, predict=False)
    result = analyze_shift(
        a.features.numpy(),
        b.features.numpy(),
        make_decomposer("kmeans", n_components=6, random_state=0),
        make_decomposer("kmeans", n_components=6, random_state=0),
    )
    print(
        f"shift: mean consistency {result.mean_consistency:.3f}, distance gain "
        f"{result.improvement.mean_distance_gain:.3f}, cosine gain {result.improvement.mean_cosine_gain:.3f}"
    )
    for name, gains in result.baselines.items():
        print(
            f"  baseline {name}: distance gain {gains['mean_distance_gain']:.3f}, "
            f"cosine gain {gains['mean_cosine_gain']:.3f}"
        )
    assert result.improvement.mean_distance_gain > 0
    assert result.improvement.mean_distance_gain > result.baselines["random_assignment"]["mean_distance_gain"]


def test_steering_no_to_yes(models):
    model, _ = models
    exist = [
        (s.image, qa.question, qa.answer)
        for s in World(seed=33).sample(160)
        for qa in s.questions_of("exist")
    ]
    train, test = exist[:160], exist[160:]
    feats = extract(
        model,
        [Sample(str(i), im, q) for i, (im, q, _) in enumerate(train)],
        "blocks.3.hook_resid_post",
        "last",
        batch_size=64,
        progress=False,
        predict=True,
    )
    vector = split_by(feats.features, [p.split(" ")[0] for p in feats.predictions], "yes", "no")
    targeted = [t for t in test if t[2] == "no"][:40]
    others = [
        (s.image, qa.question, qa.answer) for s in World(seed=34).sample(40) for qa in s.questions_of("count")
    ]
    reports = {alpha: evaluate_steering(model, targeted, others, vector, layer=3, alpha=alpha, target="yes")
               for alpha in (0.5, 1.0, 2.0)}  # fmt: skip
    for alpha, r in reports.items():
        print(
            f"steering no->yes, alpha {alpha}: target rate {r.target_rate_before:.2f} -> "
            f"{r.target_rate:.2f}; count accuracy {r.other_accuracy_before:.2f} -> "
            f"{r.other_accuracy_after:.2f}"
        )
    weak, mid, strong = reports.values()
    assert weak.target_rate_before <= 0.3 and weak.other_accuracy_before >= 0.9
    # The dose response: more of the vector flips more targeted answers ...
    assert weak.target_rate <= mid.target_rate <= strong.target_rate and mid.target_rate >= 0.8
    # ... a weak push leaves the other question type alone, a strong one spills over into it.
    assert weak.other_accuracy_after >= weak.other_accuracy_before - 0.1
    assert strong.other_accuracy_after <= weak.other_accuracy_after
