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
# # Main demo: a vision-language model, opened up
#
# TransformerLens' *Main Demo*, retold for a model that sees. Everything runs offline on the toy LLaVA
# shipped inside the package (`toy-llava-deep`: a real LLaVA — vision tower, projector, 6-layer language
# model — trained on a synthetic world whose every object, colour and position is known), in about a
# minute on a CPU. Any supported Hugging Face checkpoint wraps the same way:
# `HookedMLLM.from_pretrained("llava-hf/llava-1.5-7b-hf", dtype=torch.bfloat16, device="cuda")`.

# %%
import torch

from hooked_mllm import HookedMLLM, toy

torch.set_grad_enabled(False)
model = toy.load("toy-llava-deep")
isinstance(model, HookedMLLM), model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads

# %% [markdown]
# ## A scene it never saw, and a question
#
# `toy.World(seed=...)` draws scenes; the seeds used in training are not the ones below. Each scene knows
# its objects and the questions with their answers: the ground truth every tool below is checked against.

# %%
scene = toy.World(seed=1).sample(1)[0]
qa = scene.questions_of("color")[0]
batch = model.prepare(images=[scene.image], prompts=[qa.question])
print(qa.question, "->", qa.answer)
print([(o.color, o.shape, o.cell) for o in scene.objects])
scene.image.resize((192, 192))

# %% [markdown]
# `batch` is a `MultimodalBatch`: the model's inputs plus where every image token sits. Its masks say
# which positions are image, text, special or padding, and each image knows its token grid.

# %%
print(batch.tokens[0][:12], "...")
print("image tokens:", int(batch.image_mask.sum()), "on a grid of", batch.images[0].grid)

# %% [markdown]
# ## Hook points, with TransformerLens' names
#
# Every layer of the language model, the vision tower and the projector has named hook points.

# %%
names = model.hook_names()
print(len(names), "hook points, for example:")
print([n for n in names if n.startswith("blocks.2.")])
print(model.hook_names("vision")[:4], model.hook_names("projector"))

# %% [markdown]
# ## Caching activations
#
# `run_with_cache` returns the logits and an `ActivationCache` with TransformerLens' helpers, plus views by
# modality: `cache.image(name)` puts the image tokens back on their patch grid.

# %%
logits, cache = model.run_with_cache(batch)
answer = model.to_string(logits[0, -1].argmax())
print("answer:", answer, "| expected:", qa.answer)
print(cache["resid_post", 2].shape, cache.image("blocks.2.hook_resid_post").shape)

# %%
# the residual stream at the last position through the logit lens, layer by layer (TransformerLens' way)
resid, labels = cache.accumulated_resid(pos_slice=-1, apply_ln=True, return_labels=True)
probs = (resid @ model.W_U + model.b_U).softmax(-1)[:, 0]
target = model.to_single_token(qa.answer)
for label, p in zip(labels, probs[:, target]):
    print(f"{label:>10}  p({qa.answer}) = {p:.2f}")

# %% [markdown]
# ## Attention, drawn with circuitsvis (offline)
#
# Image tokens are labelled by their cell, `img0[r2c3]`.

# %%
from hooked_mllm import viz

viz.attention_heads(cache, layer=3, batch=batch, image=scene.image)

# %% [markdown]
# ## Hooks: edit a run
#
# A hook function takes `(activation, hook)` and returns a replacement (or `None` to only look). Here we
# zero the asked object's image tokens at the input of the language model: the answer should go.

# %%
asked = next(o for o in scene.objects if o.color == qa.answer)
image_positions = batch.image_mask[0].nonzero().squeeze(-1)  # sequence positions of the image tokens
object_positions = image_positions[list(asked.patch_indices)]  # the asked object's patches


def remove_object(act, hook):
    act = act.clone()
    act[:, object_positions] = 0
    return act


ablated = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_pre", remove_object)])
print(
    "clean:",
    model.to_string(logits[0, -1].argmax()),
    "| object removed:",
    model.to_string(ablated[0, -1].argmax()),
)

# %% [markdown]
# The same with the library's composable hook functions and position selectors (`"image"`, `"text"`,
# `"last"`, regions of an image, ...): here every image token is zero-ablated in every layer.

# %%
from hooked_mllm.hooks import Ablate, over

blind = model.run_with_hooks(
    batch, fwd_hooks=over(lambda n: n.endswith("hook_resid_pre"), Ablate("zero", "image"))
)
print("no image at all:", model.to_string(blind[0, -1].argmax()))

# %% [markdown]
# ## Generation, with hooks on every new token

# %%
out = model.generate(batch, max_new_tokens=4)
print(out.text[0])

# %% [markdown]
# ## nnsight, whenever you want it
#
# `model.trace` is nnsight's tracing context with the same hook names.

# %%
with model.trace(batch):
    h = model.hook_point("blocks.3.hook_resid_post").output.save()
torch.testing.assert_close(h, cache["blocks.3.hook_resid_post"])
h.shape
