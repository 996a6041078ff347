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
# # Beyond one machine: remote execution, offloading, data-parallel extraction
#
# Three ways to run a model that does not fit, or a dataset that takes too long, each shown on the toy and
# checked against a plain local run:
#
# 1. **Remote execution** through nnsight (NDIF, or any nnsight server): the model is built here on the `meta`
#    device, no weights are read, and every run is shipped to the server. `remote="local"` serialises each
#    request exactly as it would for NDIF and runs it here, so the round trip can be checked offline.
# 2. **Offloading** with accelerate's `device_map`: layers on CPU memory or disk, loaded for each forward.
# 3. **Data-parallel extraction**: `extract(..., rank=r, world_size=n)` (or `torchrun ... extract`), one
#    store merged in dataset order.

# %%
import tempfile

import torch

from hooked_mllm import HookedMLLM, toy
from hooked_mllm.concepts import Features, extract, toy_dataset
from hooked_mllm.hooks import Ablate

local = HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-llava"))
scene = toy.World(seed=3).sample(1)[0]
question = scene.questions[0]
batch = local.prepare(images=[scene.image], prompts=[question.question])
print(question.question, "->", question.answer)

# %% [markdown]
# ## 1. Remote execution (simulated with `remote="local"`)
#
# The same calls as a local model: caching, hooks, generation with hooks, and nnsight's `trace`. For NDIF,
# `remote=True` (with `NDIF_API_KEY` set); for another server `remote=Remote("https://...")`. docs/scale.md
# and docs/security.md say what is refused and what a server is trusted with.

# %%
remote = HookedMLLM.from_pretrained(toy.checkpoint_dir("toy-llava"), remote="local")
print("weights on the client:", next(remote.hf_model.parameters()).device)
logits, cache = remote.run_with_cache(batch, names_filter="blocks.1.hook_resid_post", positions="image")
local_logits, local_cache = local.run_with_cache(
    batch, names_filter="blocks.1.hook_resid_post", positions="image"
)
torch.testing.assert_close(logits, local_logits)
torch.testing.assert_close(cache["blocks.1.hook_resid_post"], local_cache["blocks.1.hook_resid_post"])
ablated = remote.run_with_hooks(
    batch, fwd_hooks=[("blocks.0.hook_mlp_out", Ablate("zero", positions="image"))]
)
print(
    "answer:",
    remote.generate(batch, max_new_tokens=2).text[0],
    "| image MLP outputs zeroed, top token:",
    remote.to_string(ablated[0, -1].argmax()),
)
with remote.trace(batch):
    resid = remote.hook_point("blocks.1.hook_resid_post").output.save()
print("traced:", tuple(resid.shape))

# %% [markdown]
# ## 2. Offloading: layers on disk
#
# A hand-written device map puts two decoder layers and the LM head on disk; on a GPU machine
# `device_map="auto"` with `max_memory=` splits a large model across GPU, CPU and disk the same way. Hook
# points work on offloaded layers as on any other, and the results are exactly the local ones.

# %%
device_map = {
    "model.vision_tower": "cpu",
    "model.multi_modal_projector": "cpu",
    "model.language_model.embed_tokens": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "disk",
    "model.language_model.layers.2": "disk",
    "model.language_model.layers.3": "cpu",
    "model.language_model.norm": "cpu",
    "lm_head": "disk",
}
offloaded = HookedMLLM.from_pretrained(
    toy.checkpoint_dir("toy-llava"), device_map=device_map, offload_folder=tempfile.mkdtemp()
)
logits, cache = offloaded.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_resid_post"))
_, reference = local.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_resid_post"))
torch.testing.assert_close(logits, local(batch), rtol=0, atol=0)
print(
    "every layer's residual equal to the local run:",
    all(torch.equal(cache[name], reference[name]) for name in reference.keys()),
)

# %% [markdown]
# ## 3. Data-parallel extraction
#
# Each process extracts the samples at positions `rank, rank + n, ...`; the last to finish merges every part
# into one store in dataset order. In practice the ranks are processes (`torchrun --nproc-per-node 2 -m
# hooked_mllm.cli -- extract ...`); here they run one after the other.

# %%
data = toy_dataset(6)
folder = tempfile.mkdtemp()
for rank in (0, 1):
    extract(
        local,
        data,
        "blocks.3.hook_resid_post",
        "last",
        out=f"{folder}/parallel",
        rank=rank,
        world_size=2,
        progress=False,
    )
alone = extract(local, data, "blocks.3.hook_resid_post", "last", out=f"{folder}/alone", progress=False)
together = Features.load(f"{folder}/parallel")
assert together.ids == alone.ids and together.features.equal(alone.features)
print(len(together.ids), "samples, in dataset order:", together.ids)
