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
# # Sparse autoencoders on image tokens
#
# A sparse autoencoder (SAE) rewrites a hook point's activation as a sparse sum of learned directions,
# its *features*, in the hope that each one means one thing. This notebook trains one with SAELens on the
# toy LLaVA's image tokens, measures it, splices it into the model, checks its features against the toy
# world's ground truth (which patches show which colour) and steers an answer with one of them.
#
# It needs the `sae` extra (`pip install 'hooked-mllm[sae]'`). SAELens 6.x requires
# `transformer-lens<4`, so in the repository it runs in its own environment (`.venv-sae`, as
# `make test-sae` and `make notebooks` set it up). docs/sae.md describes the whole API.

# %%
import html
import tempfile

import torch
from IPython.display import HTML, Markdown, clear_output
from sae_lens import SAE

from hooked_mllm import toy
from hooked_mllm.concepts import toy_dataset
from hooked_mllm.sae import evaluate_sae, feature_html, train_sae
from hooked_mllm.toy.world import COLORS

workdir = tempfile.mkdtemp(prefix="sae-")
model = toy.load("toy-llava")
hook = "blocks.1.hook_resid_post"  # the residual stream after the second of the LM's four blocks
print(
    model.cfg.model_class, "| d_model", model.cfg.d_model, "| image tokens per image:", toy.NUM_IMAGE_TOKENS
)

# %% [markdown]
# ## 1. Train an SAE on image-token residuals
#
# `train_sae` runs the model over a dataset again and again, keeps the activations of the chosen tokens
# (`positions="image"`: the 36 image tokens of each scene, none of the text), shuffles them and feeds
# SAELens' own trainer. A TopK SAE keeps the `k` largest features of each token: 128 features, 4 active
# per token, 16k tokens. It is saved in SAELens' format, with the hook point in its config.

# %%
sae = train_sae(
    model,
    toy_dataset(32),  # scenes of the training world (seed 0) with the caption prompt
    hook,
    positions="image",
    architecture="topk",
    k=4,
    d_sae=128,
    total_tokens=16_384,
    train_batch_size=128,
    lr=3e-3,
    out=f"{workdir}/resid1-image",
)
clear_output()  # SAELens' progress bars, finished
sae = SAE.load_from_disk(f"{workdir}/resid1-image")  # what a reader of the saved SAE gets
print(sae.cfg.metadata.hook_name, "| d_in", sae.cfg.d_in, "| d_sae", sae.cfg.d_sae)

# %% [markdown]
# ## 2. How good is it?
#
# `evaluate_sae` measures it on scenes it never saw (world seed 7), on the same tokens: **L0** (active
# features per token), **explained variance** of the reconstruction, **dead features** (never active there)
# and the **LM loss recovered** when the reconstruction replaces the activation at the image tokens,
# measured against zeroing them: 1 when splicing costs nothing, 0 when it is as bad as removing them.

# %%
asked = [(s, s.questions_of("color")[0]) for s in toy.World(seed=7).sample(32) if s.questions_of("color")]
held_out = [
    (scene.image, qa.question) for scene, qa in asked
]  # "what color is the circle ?" on unseen scenes
metrics = evaluate_sae(model, sae, held_out, positions="image")
Markdown(
    "| metric | value |\n|---|---|\n"
    + "\n".join(
        f"| {name} | {value:.3g} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in metrics.as_dict().items()
    )
)

# %% [markdown]
# That loss is SAELens' measure for a language model: next-token loss over the prompt's text. The toy
# never learned to predict its own questions (its loss there is far above chance, `ln 48` = 3.9 for its
# 48 words), so the ratio says little here. The text the toy *does* predict is the answer; the same ratio
# on the answer token, with the SAE spliced at the image tokens (without the error term: the
# reconstruction alone goes on), is the check that matters.

# %%
batch = model.prepare(images=[image for image, _ in held_out], prompts=[prompt for _, prompt in held_out])
answers = torch.tensor([model.to_single_token(qa.answer) for _, qa in asked])


def answer_loss(logits: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy of the right answer at the last position, and how often it is the top word."""
    last = logits[:, -1].log_softmax(-1)
    return float(-last.gather(-1, answers[:, None]).mean()), float(
        (last.argmax(-1) == answers).float().mean()
    )


def zero_image_tokens(act, hook):
    return act.masked_fill(batch.image_mask[..., None].to(act.device), 0.0)


clean = model(batch)
with model.saes():  # spliced for this block only
    model.add_sae(sae, positions="image")
    spliced = model(batch)
zeroed = model.run_with_hooks(batch, fwd_hooks=[(hook, zero_image_tokens)])
(loss_clean, acc_clean), (loss_sae, acc_sae), (loss_zero, acc_zero) = map(
    answer_loss, (clean, spliced, zeroed)
)
print(
    f"answer loss: clean {loss_clean:.3f} | SAE spliced {loss_sae:.3f} | image tokens zeroed {loss_zero:.3f}"
)
print(
    f"answers right: clean {acc_clean:.0%} | SAE spliced {acc_sae:.0%} | image tokens zeroed {acc_zero:.0%}"
)
recovered = (loss_zero - loss_sae) / (loss_zero - loss_clean)
print(f"answer loss recovered: {recovered:.2f}")
assert recovered > 0.8 and acc_sae >= acc_clean - 0.1

# %% [markdown]
# ## 3. Splice it with the error term
#
# With `use_error_term=True` the SAE's reconstruction error is added back, so the model computes exactly
# what it computed without the SAE, while its features are there to read (`<hook>.hook_sae_acts_post`)
# and to edit: an edit then changes the output by exactly its decoded change.

# %%
acts_name = f"{hook}.hook_sae_acts_post"
logits, cache = model.run_with_cache_with_saes(batch, saes=[sae], use_error_term=True, names_filter=acts_name)
print("largest change of a logit:", float((logits - clean).abs().max()))
print(acts_name, tuple(cache[acts_name].shape), "(batch, position, feature)")
torch.testing.assert_close(logits, clean, atol=1e-4, rtol=0)

# %% [markdown]
# ## 4. Which features see a colour?
#
# The toy world knows which image tokens show which object: `SceneObject.patch_indices` are the patches
# its pixels touch, and patch `k` is image token `k`. So each image token of unseen scenes gets the colour
# of the object it shows, or "background", and each colour gets the feature that best separates it:
# the highest F1 of "the feature is active" against "the token shows that colour".

# %%
scenes = toy.World(seed=7).sample(64)
shown = model.prepare(images=[s.image for s in scenes], prompts=[toy.CAPTION_PROMPT] * len(scenes))
_, cache = model.run_with_cache_with_saes(shown, saes=[sae], use_error_term=True, names_filter=acts_name)
features = cache[acts_name][shown.image_mask]  # [scenes x 36 image tokens, d_sae], image token k = patch k
truth = [
    {patch: obj.color for obj in scene.objects for patch in obj.patch_indices}.get(k, "background")
    for scene in scenes
    for k in range(toy.NUM_IMAGE_TOKENS)
]
active = features > 0
rows, best = [], {}
for color in COLORS:
    is_color = torch.tensor([label == color for label in truth])
    hits = (active & is_color[:, None]).sum(0).float()
    # precision: of the tokens where a feature is active, the share showing this colour;
    # recall: of the tokens showing this colour, the share where it is active
    precision = hits / active.sum(0).clamp(min=1)
    recall = hits / is_color.sum()
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-9)
    feature = int(f1.argmax())
    best[color] = feature
    on_color = features[is_color, feature].mean()
    elsewhere = features[~is_color & active[:, feature], feature].mean()
    rows.append(
        f"| {color} | {feature} | {precision[feature]:.2f} | {recall[feature]:.2f} "
        f"| {float(on_color):.3g} | {float(elsewhere):.3g} |"
    )
Markdown(
    "| colour | best feature | precision | recall | mean activation on the colour | elsewhere, if active |\n"
    "|---|---|---|---|---|---|\n" + "\n".join(rows)
)

# %% [markdown]
# Red gets a feature of its own: active on every red patch, and on other patches only weakly. The other
# colours are less clean in an SAE this small, trained for seconds: some features are precise but miss
# many of their colour's patches, some are shared by two colours. The rest of the notebook follows red.

# %%
red = best["red"]
is_red = torch.tensor([label == "red" for label in truth])
print(f"feature {red}: active on {float(active[is_red, red].float().mean()):.0%} of the red patches")
print(f"its 20 strongest tokens are red patches: {bool(is_red[features[:, red].topk(20).indices].all())}")
assert bool(is_red[features[:, red].topk(20).indices].all())

# %% [markdown]
# ## 5. Its dashboard
#
# `feature_html` (or `write_feature_page` for a file) shows a feature: its top image patches outlined on
# their images, the words its decoder direction writes (logit lens) and resembles (embedding lens), and
# the histogram of its activations. The page is self-contained; here it sits in a frame. (The words say
# little on toy-llava, whose image tokens do not read as words; on toy-llava-deep they do.)

# %%
page = feature_html(model, sae, toy_dataset(24, seed=7), red, k=6)
HTML(f'<div><iframe srcdoc="{html.escape(page)}" width="100%" height="720" style="border:0"></iframe></div>')

# %% [markdown]
# ## 6. Steer with it
#
# Ask the colour of an object that is not red, and add the red feature on that object's image tokens
# during generation. The SAE is spliced with the error term and only at the image tokens: the points
# inside it then hold one row per image token of the batch, in order, so row `36 i + k` is patch `k` of
# question `i`. As a control, add it on *another* object of the same scene instead: the answer about the
# asked object should not move. Strengths are multiples of the feature's mean activation on red patches.

# %%
questions = []  # (scene, question, the object asked about, another object of the scene)
for scene in toy.World(seed=8).sample(60):
    for qa in scene.questions_of("color"):
        target = next(obj for obj in scene.objects if obj.shape in qa.question.split())
        other = next((obj for obj in scene.objects if obj is not target), None)
        if qa.answer != "red" and other is not None:
            questions.append((scene, qa, target, other))
asking = model.prepare(
    images=[scene.image for scene, *_ in questions], prompts=[qa.question for _, qa, *_ in questions]
)
typical = float(features[is_red, red].mean())


def add_red(objects, strength):
    """A hook on the SAE's features adding the red feature on each question's object's image tokens."""
    rows = [i * toy.NUM_IMAGE_TOKENS + patch for i, obj in enumerate(objects) for patch in obj.patch_indices]

    def hook_fn(acts, hook):  # [image tokens of the batch, d_sae]
        acts = acts.clone()
        acts[rows, red] += strength
        return acts

    return hook_fn


def answers_with(hooks):
    return [text.strip() for text in model.generate(asking, max_new_tokens=1, fwd_hooks=hooks).text]


def share(answers, expected):
    return sum(a == e for a, e in zip(answers, expected)) / len(answers)


truths = [qa.answer for _, qa, *_ in questions]
on_target = [target for _, _, target, _ in questions]
on_other = [other for *_, other in questions]
steered = {}
with model.saes():
    model.add_sae(sae, use_error_term=True, positions="image")
    plain = answers_with([])
    rows = [f"| none | | {share(plain, ['red'] * len(plain)):.0%} | {share(plain, truths):.0%} |"]
    for times in (1, 2, 3):
        for where, objects in (("the asked object", on_target), ("another object", on_other)):
            got = answers_with([(acts_name, add_red(objects, times * typical))])
            steered[times, where] = got
            red_share, right_share = share(got, ["red"] * len(got)), share(got, truths)
            rows.append(f"| {times} x {typical:.3g} | {where} | {red_share:.0%} | {right_share:.0%} |")
Markdown(
    f"{len(questions)} colour questions about objects that are not red\n\n"
    "| red feature added | on | answered red | answered right |\n|---|---|---|---|\n" + "\n".join(rows)
)

# %% [markdown]
# Added on the object asked about, the feature turns most answers to "red"; added with the same strength on
# another object of the image, it leaves them alone: the feature means "this patch is red", at that patch.
# (The rest keep their colour: the other colour features are still active on those patches.)

# %%
turned = steered[2, "the asked object"]
assert share(turned, ["red"] * len(turned)) > 0.5 and share(steered[2, "another object"], truths) > 0.85
i = next(i for i, answer in enumerate(turned) if answer == "red" and plain[i] == truths[i])
scene, qa, target, other = questions[i]
print(f"{qa.question} plain: {plain[i]} | red feature on the {target.shape}: {turned[i]}")
print(f"red feature on the {other.name} instead: {steered[2, 'another object'][i]}")
scene.image.resize((144, 144))

# %% [markdown]
# One feature, found by its activations alone and checked against the ground truth, is also a handle on
# what the model says, and where. Next: train on more tokens (`hooked-mllm sae train` does it from the
# command line and writes the metrics), at other hook points (the vision tower, the projector, per-head
# `hook_z`), and read the SAELens SAEs of real models the same way.
