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
# # Activation and attribution patching over the image grid
#
# Run the model on a clean image and on a corrupted one (the asked object recoloured), then copy clean
# activations into the corrupted run one piece at a time: the pieces that restore the answer are where it
# lives. Over image cells, a sweep is a map over the image, per layer. Attribution patching approximates
# the whole sweep with one backward pass; we compare the two, and see where the approximation breaks.

# %%
import numpy as np
import torch
from PIL import Image

from hooked_mllm import toy, viz
from hooked_mllm.patching import activation_patching, attribution_patching, logit_diff, mask_region
from hooked_mllm.toy.world import COLORS

model = toy.load("toy-llava")
scene = next(s for s in toy.World(seed=2) if len(s.objects) > 1 and s.questions_of("color"))
qa = scene.questions_of("color")[0]
asked = next(o for o in scene.objects if o.shape in qa.question.split() and o.color == qa.answer)
new = next(c for c in COLORS if c not in {o.color for o in scene.objects})
pixels = np.array(scene.image)
pixels[asked.mask] = COLORS[new]
recoloured = Image.fromarray(pixels)
clean = model.prepare(images=[scene.image], prompts=[qa.question])
corrupted = model.prepare(images=[recoloured], prompts=[qa.question])  # the same token layout
print(qa.question, "->", qa.answer, "| recoloured to", new)
_ = viz.heatmaps([np.zeros((6, 6))] * 2, [scene.image, recoloured], titles=["clean", "corrupted"])

# %% [markdown]
# The metric: the logit difference between the right colour and the new one, at the last position.

# %%
metric = logit_diff(model.to_single_token(qa.answer), model.to_single_token(new))
print(
    "clean:", float(metric(model(clean), clean)), "| corrupted:", float(metric(model(corrupted), corrupted))
)

# %% [markdown]
# ## Activation patching: layer x cell
#
# `over="cell"` patches 2 x 2 blocks of the 6 x 6 token grid (one block per world cell) at the input of
# every layer. `normalized()` is 1 where the clean answer is fully restored.

# %%
sweep = activation_patching(model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=(2, 2))
print("values:", tuple(sweep.values.shape), "(layer, rows, cols); forward passes:", sweep.forward_passes)
row, col = asked.cell
print(
    "peak (layer, cell):",
    sweep.peak(),
    "=",
    sweep.labels[sweep.peak()[1]],
    "| the object's cell:",
    (row, col),
)
assert sweep.labels[sweep.peak()[1]] == f"r{row}c{col}"
sweep

# %% [markdown]
# ## Attribution patching: the same table from one backward pass


# %%
def correlation(a, b):
    return float(np.corrcoef(a.flat().flatten().numpy(), b.flat().flatten().numpy())[0, 1])


fast = attribution_patching(model, clean, corrupted, metric, hook="resid_pre", over="cell", cell=(2, 2))
passes = f"{fast.forward_passes} forward + {fast.backward_passes} backward passes, not {sweep.forward_passes}"
print(f"correlation with activation patching: {correlation(sweep, fast):.2f}; {passes}")
layer = sweep.peak()[0]
_ = viz.heatmaps(
    [sweep.location_map(layer), fast.location_map(layer)],
    scene.image,
    titles=[f"activation patching, layer {layer}", f"attribution patching, layer {layer}"],
)

# %% [markdown]
# ### Where the approximation breaks
#
# Attribution patching is a first-order Taylor expansion around the corrupted run: as good as the model is
# locally linear between the two runs. Blacking the object out, instead of recolouring it, is a far larger
# change; measured on the same scene, the approximation no longer ranks the cells. Check it against
# activation patching on a few pairs before trusting a sweep.

# %%
blacked = mask_region(scene.image, (16 * col, 16 * row, 16 * col + 16, 16 * row + 16))
removed = model.prepare(images=[blacked], prompts=[qa.question])
exact = activation_patching(model, clean, removed, metric, hook="resid_pre", over="cell", cell=(2, 2))
approx = attribution_patching(model, clean, removed, metric, hook="resid_pre", over="cell", cell=(2, 2))
print(f"object blacked out: correlation {correlation(exact, approx):.2f}")

# %% [markdown]
# ## Over heads
#
# With `hook="z"` and `over="head"`, each head's output is patched on its own: which heads carry the
# object's colour to the answer?

# %%
heads = activation_patching(model, clean, corrupted, metric, hook="z", over="head")
_ = viz.heatmap(heads.normalized(), title="restored by patching one head (layer x head)", label="fraction")
torch.round(heads.normalized(), decimals=2)
