"""Hook functions: patching, ablation, directions, steering, composition, selectors."""

from __future__ import annotations

import pytest
import torch

from hooked_mllm import positions
from hooked_mllm.hooks import (
    Ablate,
    CacheTo,
    HookFunction,
    PatchFrom,
    PatchSubspace,
    ProjectOut,
    ScaleComponent,
    SetComponent,
    Steer,
    compose,
)
from hooked_mllm.testing import image_pair


@pytest.fixture
def pair(hooked):
    return image_pair(hooked, (10, 11))


def test_patch_everything_gives_clean_and_nothing_gives_corrupted(hooked, pair):
    clean, corrupted = pair
    clean_logits, cache = hooked.run_with_cache(clean, names_filter="blocks.1.hook_resid_post")
    corrupted_logits = hooked(corrupted)
    patched = hooked.run_with_hooks(
        corrupted, fwd_hooks=[("blocks.1.hook_resid_post", PatchFrom(cache, "all"))]
    )
    torch.testing.assert_close(patched, clean_logits, rtol=0, atol=0)
    nothing = torch.zeros(corrupted.shape[1], dtype=torch.bool)
    same = hooked.run_with_hooks(
        corrupted, fwd_hooks=[("blocks.1.hook_resid_post", PatchFrom(cache, nothing))]
    )
    torch.testing.assert_close(same, corrupted_logits, rtol=0, atol=0)


def test_patch_image_region_touches_only_those_positions(hooked, pair):
    clean, corrupted = pair
    _, cache = hooked.run_with_cache(clean, names_filter="blocks.0.hook_resid_pre")
    _, corrupted_cache = hooked.run_with_cache(corrupted, names_filter="blocks.0.hook_resid_pre")
    store = {}
    region = positions.image(rows=slice(0, 2), cols=[1])
    hooked.run_with_hooks(
        corrupted,
        fwd_hooks=[
            ("blocks.0.hook_resid_pre", PatchFrom(cache, region)),
            ("blocks.0.hook_resid_pre", CacheTo(store)),
        ],
    )
    after = store["blocks.0.hook_resid_pre"]
    span = corrupted.images_of(0)[0]
    chosen = [span.start + 0 * 4 + 1, span.start + 1 * 4 + 1]
    others = [p for p in range(corrupted.shape[1]) if p not in chosen]
    torch.testing.assert_close(after[0, chosen], cache["resid_pre", 0][0, chosen])
    torch.testing.assert_close(after[0, others], corrupted_cache["resid_pre", 0][0, others])


def test_project_out_and_components(hooked, pair):
    _, batch = pair
    d = hooked.cfg.d_model
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0))
    unit = direction / direction.norm()
    store = {}
    _, before = hooked.run_with_cache(batch, names_filter="blocks.1.hook_resid_post")
    x = before["resid_post", 1]
    hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            ("blocks.1.hook_resid_post", ProjectOut(direction)),
            ("blocks.1.hook_resid_post", CacheTo(store)),
        ],
    )
    y = store["blocks.1.hook_resid_post"]
    assert float((y @ unit).abs().max()) < 1e-4
    torch.testing.assert_close(y, x - (x @ unit)[..., None] * unit, atol=1e-5, rtol=1e-5)
    scaled = {}
    hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            ("blocks.1.hook_resid_post", ScaleComponent(direction, 0.0)),
            ("blocks.1.hook_resid_post", CacheTo(scaled)),
        ],
    )
    torch.testing.assert_close(scaled["blocks.1.hook_resid_post"], y, atol=1e-5, rtol=1e-5)
    set_to = {}
    hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            ("blocks.1.hook_resid_post", SetComponent(direction, 2.5, "image")),
            ("blocks.1.hook_resid_post", CacheTo(set_to)),
        ],
    )
    coeff = set_to["blocks.1.hook_resid_post"] @ unit
    torch.testing.assert_close(coeff[batch.image_mask], torch.full((16,), 2.5), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(coeff[~batch.image_mask], (x @ unit)[~batch.image_mask], atol=1e-5, rtol=1e-5)
    basis = torch.randn(3, d, generator=torch.Generator().manual_seed(1))
    sub = {}
    hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            ("blocks.1.hook_resid_post", ProjectOut(basis)),
            ("blocks.1.hook_resid_post", CacheTo(sub)),
        ],
    )
    assert float((sub["blocks.1.hook_resid_post"] @ basis.T).abs().max()) < 1e-3
    swapped = {}
    hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            ("blocks.1.hook_resid_post", PatchSubspace(basis, torch.zeros_like(x))),
            ("blocks.1.hook_resid_post", CacheTo(swapped)),
        ],
    )
    torch.testing.assert_close(
        swapped["blocks.1.hook_resid_post"], sub["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5
    )


def test_ablations(hooked, batch):
    zero = hooked.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_mlp_out", Ablate("zero"))])
    ref = hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            (
                "blocks.1.hook_mlp_out",
                lambda a, h: torch.where((~batch.pad_mask)[..., None], torch.zeros_like(a), a),
            )
        ],
    )
    torch.testing.assert_close(zero, ref)
    store = {}
    hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            ("blocks.1.hook_mlp_out", Ablate("mean", positions="image")),
            ("blocks.1.hook_mlp_out", CacheTo(store)),
        ],
    )
    out = store["blocks.1.hook_mlp_out"]
    _, cache = hooked.run_with_cache(batch, names_filter="blocks.1.hook_mlp_out")
    mean = cache["mlp_out", 1][batch.image_mask].mean(0)
    torch.testing.assert_close(out[batch.image_mask], mean.expand(32, -1), atol=1e-5, rtol=1e-5)
    pool = torch.randn(3, 5, hooked.cfg.d_model)
    a = hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            (
                "blocks.1.hook_mlp_out",
                Ablate("resample", positions="text", source=pool, generator=torch.Generator().manual_seed(0)),
            )
        ],
    )
    b = hooked.run_with_hooks(
        batch,
        fwd_hooks=[
            (
                "blocks.1.hook_mlp_out",
                Ablate("resample", positions="text", source=pool, generator=torch.Generator().manual_seed(0)),
            )
        ],
    )
    torch.testing.assert_close(a, b)


def test_apply_returning_none_leaves_the_selected_heads_unchanged(hooked, pair):
    # None from apply() means "unchanged", with heads= as without (it raised TypeError with heads=)
    _, corrupted = pair
    seen = []

    class Unchanged(HookFunction):
        def apply(self, selected, hook, mask, heads):
            seen.append(tuple(selected.shape))
            return None

    plain = hooked(corrupted)
    for heads in ([1], None):
        out = hooked.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_z", Unchanged("all", heads))])
        torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert len(seen) == 2 and seen[0][1] == 1 and seen[1][1] == hooked.cfg.n_heads


def test_per_head_patch_matches_manual(hooked, pair):
    clean, corrupted = pair
    _, cache = hooked.run_with_cache(clean, names_filter="blocks.1.attn.hook_z")
    out = hooked.run_with_hooks(
        corrupted, fwd_hooks=[("blocks.1.attn.hook_z", PatchFrom(cache, "all", heads=[2]))]
    )

    def manual(z, hook):
        z = z.clone()
        z[:, :, 2] = cache["z", 1][:, :, 2]
        return z

    torch.testing.assert_close(
        out, hooked.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_z", manual)])
    )


def test_steering(hooked, batch):
    clean = hooked(batch)
    zero = Steer(torch.zeros(hooked.cfg.d_model), alpha=5.0)
    torch.testing.assert_close(
        hooked.run_with_hooks(batch, fwd_hooks=[("blocks.0.hook_resid_post", zero)]), clean, rtol=0, atol=0
    )
    v = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(3))
    base = hooked.generate(batch, max_new_tokens=4, min_new_tokens=4)
    only_generated = hooked.generate(
        batch,
        max_new_tokens=4,
        min_new_tokens=4,
        fwd_hooks=[("blocks.0.hook_resid_post", Steer(v, 30.0, "generated"))],
    )
    assert torch.equal(only_generated.new_tokens[:, 0], base.new_tokens[:, 0])  # prompt forward untouched
    assert not torch.equal(only_generated.new_tokens, base.new_tokens)
    per_row = torch.stack([torch.zeros_like(v), v])
    logits = hooked.run_with_hooks(
        batch, fwd_hooks=[("blocks.0.hook_resid_post", Steer(per_row, 30.0, "last"))]
    )
    torch.testing.assert_close(logits[0], clean[0], rtol=0, atol=0)
    assert not torch.allclose(logits[1, -1], clean[1, -1])
    with pytest.raises(ValueError, match="Unknown steering schedule"):
        Steer(v, 1.0, "sometimes")


def test_compose_and_generation_cache(hooked, batch):
    v = torch.randn(hooked.cfg.d_model, generator=torch.Generator().manual_seed(4))
    both = hooked.run_with_hooks(
        batch, fwd_hooks=[("blocks.0.hook_resid_post", compose(ProjectOut(v), Steer(v, 2.0)))]
    )
    seq = hooked.run_with_hooks(
        batch,
        fwd_hooks=[("blocks.0.hook_resid_post", ProjectOut(v)), ("blocks.0.hook_resid_post", Steer(v, 2.0))],
    )
    torch.testing.assert_close(both, seq)
    store = {}
    out = hooked.generate(
        batch,
        max_new_tokens=3,
        min_new_tokens=3,
        fwd_hooks=[("blocks.2.hook_resid_post", CacheTo(store, "everything", every_step=True))],
    )
    steps = store["blocks.2.hook_resid_post"]
    assert len(steps) == 3 and out.new_tokens.shape[1] == 3
    assert [tuple(s.shape[:2]) for s in steps[1:]] == [(2, 1), (2, 1)]


def test_token_selector(hooked, batch):
    mask = positions.token("circle", hooked.processor.tokenizer).mask(batch.row(0))
    assert mask.sum() == 1 and batch.row(0).tokens[0][int(mask[0].nonzero())] == "circle"
    with pytest.raises(ValueError, match="does not occur"):
        positions.token("triangle", hooked.processor.tokenizer).mask(batch)
    with pytest.raises(ValueError, match="Unknown position name"):
        positions.as_selector("imagez")


def test_pixel_box_selects_the_cells_it_covers(hooked, pair):
    _, batch = pair
    span = batch.images_of(0)[0]  # a 4x4 grid over a 32x32 image: 8 px per cell
    mask = positions.image(box=(8, 0, 20, 9), image_size=(32, 32)).mask(batch)[0]
    chosen = (mask.nonzero().flatten() - span.start).tolist()
    assert chosen == [1, 2, 5, 6]  # rows 0-1 (0..9 px), cols 1-2 (8..20 px)
    with pytest.raises(ValueError, match="needs image_size"):
        positions.image(box=(0, 0, 4, 4))


def test_hook_context_lives_in_a_public_module(hooked, batch):
    import hooked_mllm
    from hooked_mllm import hook_points

    assert hooked_mllm.HookContext is hook_points.HookContext
    assert not any(part.startswith("_") for part in hook_points.HookContext.__module__.split("."))
    seen = []
    hooked.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, h: seen.append(h))])
    assert isinstance(seen[0], hooked_mllm.HookContext) and seen[0].layer() == 1 and seen[0].is_prompt
