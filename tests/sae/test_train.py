"""Training SAELens SAEs on streamed activations: the stream holds exactly the model's activations at the
chosen tokens, SAELens' trainer lowers the reconstruction error, the result round-trips through SAELens'
format and splices back in; the metrics agree with independent computations."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_mllm import positions  # noqa: E402
from hooked_mllm.concepts import toy_dataset  # noqa: E402
from hooked_mllm.sae.evaluate import evaluate_sae  # noqa: E402
from hooked_mllm.sae.train import activation_batches, token_activations, train_sae  # noqa: E402
from hooked_mllm.testing import random_image  # noqa: E402

from .helpers import random_sae  # noqa: E402

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def data():
    prompts = ["what color is the circle ?", "how many objects", "where is the red square ?", "describe it"]
    return [(random_image(i), prompts[i % 4]) for i in range(6)]


@pytest.mark.parametrize("where", ["image", "text"])
def test_stream_holds_the_activations_at_the_chosen_tokens(hooked, data, where):
    batch = hooked.prepare(images=[image for image, _ in data[:3]], prompts=[p for _, p in data[:3]])
    _, cache = hooked.run_with_cache(batch, names_filter=HOOK)
    expected = cache[HOOK][positions.resolve(where, batch)]
    torch.testing.assert_close(token_activations(hooked, batch, HOOK, where), expected)
    rows = torch.cat(
        list(
            activation_batches(
                hooked, data[:3], HOOK, positions=where, batch_size=3, train_batch_size=7, epochs=1
            )
        )
    )
    assert rows.shape == expected.shape
    # shuffled, but the same rows: sort both by their first coordinate
    torch.testing.assert_close(rows[rows[:, 0].argsort()], expected[expected[:, 0].argsort()])


def test_vision_points_give_every_patch_and_refuse_positions(hooked, data):
    batch = hooked.prepare(images=[data[0][0]], prompts=[data[0][1]])
    name = "vision.blocks.0.hook_resid_post"
    _, cache = hooked.run_with_cache(batch, names_filter=name)
    torch.testing.assert_close(
        token_activations(hooked, batch, name), cache[name].reshape(-1, cache[name].shape[-1])
    )
    with pytest.raises(ValueError, match="sequence axis"):
        token_activations(hooked, batch, name, "image")


def test_train_save_load_splice(hooked, data, tmp_path):  # (TopK is trained in the guide and the CLI test)
    from sae_lens import SAE

    sae = train_sae(
        hooked,
        data,
        HOOK,
        positions="image",
        architecture="standard",
        l1_coefficient=0.5,
        d_sae=96,
        total_tokens=2048,
        train_batch_size=64,
        lr=3e-3,
        batch_size=3,
        out=tmp_path / "sae",
    )
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.metadata.hook_name == HOOK and loaded.cfg.d_sae == 96
    for name, param in sae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], param)
    # trained: reconstructs the image tokens better than an untrained SAE of the same shape
    before = evaluate_sae(
        hooked, random_sae(hooked.cfg.d_model, HOOK, d_sae=96), data, positions="image", lm_loss=False
    )
    after = evaluate_sae(hooked, loaded, data, positions="image")
    assert after.explained_variance > max(0.3, before.explained_variance)
    assert after.loss_recovered is not None and after.loss_zero is not None
    hooked.add_sae(loaded, positions="image")
    try:
        _, cache = hooked.run_with_cache(
            hooked.prepare(images=[data[0][0]], prompts=[data[0][1]]),
            names_filter=f"{HOOK}.hook_sae_acts_post",
        )
    finally:
        hooked.reset_saes()
    assert cache[f"{HOOK}.hook_sae_acts_post"].shape[-1] == 96


@torch.no_grad()
def test_metrics_match_independent_computations(hooked, data):
    sae = random_sae(hooked.cfg.d_model, HOOK, d_sae=64, seed=4)
    metrics = evaluate_sae(hooked, sae, data, positions="text", batch_size=6)
    batch = hooked.prepare(images=[image for image, _ in data], prompts=[p for _, p in data])
    _, cache = hooked.run_with_cache(batch, names_filter=HOOK)
    mask = positions.resolve("text", batch)
    x = cache[HOOK][mask]
    feats = sae.encode(x)
    x_hat = sae.decode(feats)
    assert metrics.n_tokens == x.shape[0]
    assert metrics.l0 == pytest.approx(float((feats != 0).float().sum(-1).mean()), rel=1e-5)
    ev = 1 - float(((x - x_hat) ** 2).sum()) / float(((x - x.mean(0)) ** 2).sum())
    assert metrics.explained_variance == pytest.approx(ev, rel=1e-4)
    assert metrics.dead_features == int((feats.abs().sum(0) == 0).sum())
    clean = float(hooked(batch, return_type="loss"))

    def spliced(act, hook):
        new = act.clone()
        new[mask] = sae(act[mask])
        return new

    def zeroed(act, hook):
        new = act.clone()
        new[mask] = 0
        return new

    loss_sae = float(hooked.run_with_hooks(batch, fwd_hooks=[(HOOK, spliced)], return_type="loss"))
    loss_zero = float(hooked.run_with_hooks(batch, fwd_hooks=[(HOOK, zeroed)], return_type="loss"))
    assert metrics.loss_clean == pytest.approx(clean, rel=1e-5)
    assert metrics.loss_spliced == pytest.approx(loss_sae, rel=1e-5)
    assert metrics.loss_recovered == pytest.approx((loss_zero - loss_sae) / (loss_zero - clean), rel=1e-4)


def test_resume_continues_from_a_checkpoint(hooked, data, tmp_path):
    from sae_lens import TrainingSAE

    train_sae(
        hooked,
        data,
        HOOK,
        positions="text",
        d_sae=32,
        total_tokens=512,
        train_batch_size=32,
        out=tmp_path / "a",
        n_checkpoints=1,
        batch_size=3,
    )
    (checkpoint,) = sorted((tmp_path / "a" / "checkpoints").iterdir())
    done = torch.load(checkpoint / "trainer_state.pt", weights_only=False)["n_training_samples"]
    assert 0 < done < 512
    # resumed with nothing left to train: the checkpoint's weights (with its activation scale folded in)
    resumed = train_sae(
        hooked,
        data,
        HOOK,
        positions="text",
        d_sae=32,
        total_tokens=done,
        train_batch_size=32,
        resume_from=checkpoint,
        batch_size=3,
    )
    saved = TrainingSAE.load_from_disk(checkpoint)
    cosine = torch.nn.functional.cosine_similarity(resumed.W_dec, saved.W_dec, dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_bad_options_are_refused(hooked, data):
    with pytest.raises(ValueError, match="architecture"):
        train_sae(hooked, data, HOOK, architecture="nope")
    with pytest.raises(ValueError, match="n_checkpoints needs out"):
        train_sae(hooked, data, HOOK, n_checkpoints=2)
    assert toy_dataset(1)
