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
# # Where does the model look?
#
# The LLaVA mechanism paper's question: which image locations carry the answer, and through which heads?
# Its tool reads each head's contribution to the answer out through the language model's head, per image
# position, in one forward. This notebook runs it on the toy LLaVA, next to the usual baselines
# (attention, attention x gradient relevancy, input x gradient, occlusion), and then checks them all
# against the toy world's ground truth with the pointing game.

# %%
from IPython.display import Markdown

from hooked_mllm import toy, viz
from hooked_mllm.mechanism import (
    attention_map,
    explain_positions,
    gradient_map,
    head_scores,
    image_locations,
    occlusion_map,
    pointing_game,
    relevancy_map,
)

model = toy.load("toy-llava")
scene = toy.World(seed=7).scene(6)  # three objects; scenes of seed 7 were never seen in training
batch = model.prepare(images=[scene.image], prompts=["what color is the triangle ?"])
print(model.generate(batch, max_new_tokens=1).text[0], [(o.color, o.shape, o.cell) for o in scene.objects])
scene.image.resize((192, 192))

# %% [markdown]
# ## Which heads answer?
#
# `head_scores` measures how much each head writes the answer's direction at the last position.

# %%
scores = head_scores(model, batch)
print("top heads (layer, head):", scores.top(3))
_ = viz.heatmap(scores.values[0], title="head scores: layer x head", label="score")

# %% [markdown]
# ## Where do they read it from?
#
# `image_locations` splits a head's contribution over the image positions it attended to and reads each
# piece out through the LM head: a map over the image grid. The paper takes the single top head; we also
# show the top head of the later layers and every head summed.

# %%
maps = {
    "top head (paper)": image_locations(model, batch),
    "top head, later layers": image_locations(model, batch, layers=slice(2, None)),
    "every head": image_locations(model, batch, heads="all"),
    "attention (baseline)": attention_map(model, batch),
    "relevancy": relevancy_map(model, batch),
    "input x gradient": gradient_map(model, batch),
    "occlusion": occlusion_map(model, batch),
}
triangle = next(o for o in scene.objects if o.shape == "triangle")
for name, where in maps.items():
    hit = where.peak_index() in triangle.patch_indices
    print(f"{name:>24}: peak at cell {where.peak()}, on the triangle: {hit}")
_ = viz.heatmaps(list(maps.values()), scene.image, titles=list(maps), ncols=4, shared_scale=False)

# %% [markdown]
# ## What does the model read there?
#
# The logit lens of the layer input at the peak position, and of what attention and the MLP wrote there.

# %%
peak = maps["every head"].peak()
Markdown(explain_positions(model, batch, [peak], layer=2).table())

# %% [markdown]
# ## The pointing game: scored against the ground truth
#
# For every question about one object in a handful of unseen scenes, does each map's peak fall on the asked
# object? Chance levels are exact expectations (a random patch; a random object of the scene). The docs'
# table (docs/mechanism.md) plays it on 60 scenes.

# %%
scenes = [toy.World(seed=7).scene(i) for i in range(8)]
result = pointing_game(model, scenes, methods=["heads_top", "heads_all", "attention"])
assert result.accuracy["heads_all"] > result.random_object
Markdown(result.table())
