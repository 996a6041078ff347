# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Concepts, fine-tuning shift and steering
#
# The seed papers' pipeline end to end (CoX-LMM's concept dictionaries; the fine-tuning-shift paper's shift
# vectors and steering), on the toy: extract the representations that predict a word, learn a dictionary of
# concepts and ground them in words and images, measure how fine-tuning moved each concept, and steer
# answers with a vector taken from the model's own activations.

# %%
import tempfile

from IPython.display import Markdown

from hooked_mllm import toy
from hooked_mllm.concepts import (
    KMeansConcepts,
    Sample,
    TokenRule,
    analyze_shift,
    evaluate_steering,
    extract,
    make_decomposer,
    split_by,
    steering_hooks,
    text_grounding,
    toy_dataset,
    visual_grounding,
)

workdir = tempfile.mkdtemp(prefix="concepts-")
model = toy.load("toy-llava-ft")  # fine-tuned to caption colours: "a red circle and a blue square"
original = toy.load("toy-llava")

# %% [markdown]
# ## 1. Extraction
#
# `extract` reads several hook points in one pass into a resumable, memory-mapped store. The rule says
# *which* token: here the position whose output predicts the word "red" in each caption that says it.

# %%
hook = "blocks.3.hook_resid_post"
feats = extract(
    model,
    toy_dataset(60),
    [hook],
    token=TokenRule("predicting", token="red"),
    batch_size=16,
    out=f"{workdir}/red",
    progress=False,
)
Z = feats[hook].features
print("features:", tuple(Z.shape), "| skipped (no red in the caption):", len(feats.manifest["skipped"]))

# %% [markdown]
# ## 2. A concept dictionary, grounded in words and images
#
# CoX-LMM learns sparse non-negative codes over unit-norm atoms; `make_decomposer("sparse")` minimises the
# same objective. Each concept is then read out through the LM head (text grounding) and by its top samples
# (visual grounding).

# %%
dec = make_decomposer("sparse", n_components=5, alpha=1.0, random_state=0)
V = dec.fit_transform(Z)
words = text_grounding(model, dec, top_k=50, n_words=6)
tops = visual_grounding(V, feats[hook].ids, top=3)
Markdown(
    "| concept | words | top samples |\n|---|---|---|\n"
    + "\n".join(
        f"| {k} | {', '.join(w)} | {', '.join(map(str, t))} |" for k, (w, t) in enumerate(zip(words, tops))
    )
)

# %% [markdown]
# ## 3. What fine-tuning moved
#
# The same captions through the original and the fine-tuned model; concepts found in each, per-concept shift
# vectors, and how much better the shifted original concepts match the fine-tuned ones than two baselines (one
# global mean shift; shifts after a random concept assignment).

# %%
captions = toy_dataset(80, seed=1)
before = extract(original, captions, hook, "last", out=f"{workdir}/before", progress=False)
after = extract(model, captions, hook, "last", out=f"{workdir}/after", progress=False)
shift = analyze_shift(
    before.features,
    after.features,
    KMeansConcepts(4, random_state=0),
    KMeansConcepts(4, random_state=0),
    alpha=1.0,
)
print("shift consistency per concept:", [round(float(c), 2) for c in shift.consistency])
print("improvement:", shift.improvement)
print("baselines:", shift.baselines)

# %% [markdown]
# ## 4. Steering: "is there a ...?" from yes to no
#
# A steering vector is the mean difference between the activations of the answers "no" and "yes"; added at
# one layer it should turn "yes" into "no" on the targeted questions and leave the others alone.

# %%
exist = [
    Sample(f"{i}-{qa.answer}", scene.image, qa.question)
    for i, scene in enumerate(toy.World(seed=2).sample(30))
    for qa in scene.questions_of("exist")
]
answers = extract(model, exist, hook, "last", predict=True, out=f"{workdir}/exist", progress=False)
vector = split_by(answers.features, answers.predictions, target="no", source="yes")
yes = next(s for s in exist if s.id.endswith("-yes"))
batch = model.prepare(images=[yes.image], prompts=[yes.prompt])
print(yes.prompt, "| plain:", model.generate(batch, max_new_tokens=1).text[0].strip(), end=" | ")
steered = model.generate(
    batch, max_new_tokens=1, fwd_hooks=steering_hooks(vector, layer=3, alpha=1.0, schedule="all")
)
print("steered:", steered.text[0].strip())

# %%
scenes = toy.World(seed=3).sample(20)
targeted = [
    (s.image, qa.question, "yes") for s in scenes for qa in s.questions_of("exist") if qa.answer == "yes"
]
others = [
    (s.image, s.questions_of("count")[0].question, s.questions_of("count")[0].answer, "count") for s in scenes
]
for alpha in (0.25, 0.5, 1.0):
    report = evaluate_steering(model, targeted, others, vector, layer=3, alpha=alpha, target="no")
    targeted_rate = f"{report.target_rate_before:.2f} -> {report.target_rate:.2f}"
    other_rate = f"{report.other_accuracy_before:.2f} -> {report.other_accuracy_after:.2f}"
    print(
        f"alpha {alpha}: 'no' on the targeted questions {targeted_rate}; count questions right {other_rate}"
    )

# %% [markdown]
# At full strength the vector turns every targeted answer and also breaks answers it was not meant for; at
# half strength it turns most and leaves the others alone. Measure both before using one
# (`rank_steering_vectors` compares several vectors and layers on the same two sets).
