"""How good a trained SAE is on a model's activations: sparsity, reconstruction, dead features and the
language-model loss recovered when it is spliced in.

The SAE's own ``encode`` / ``decode`` give the features and the reconstruction; the loss is
:meth:`~hooked_mllm.HookedMLLM.lm_loss` (next-token cross-entropy over the text targets) of three runs
of each batch: clean, with the SAE spliced (:meth:`~hooked_mllm.HookedMLLM.run_with_saes`, at the same
positions), and with the hook point's value zeroed at those positions (the baseline).
``loss_recovered = (loss_zero - loss_spliced) / (loss_zero - loss_clean)``: 1 when splicing costs
nothing, 0 when it is as bad as removing the activation (SAELens' ``ce_loss_score``).

Examples:
    >>> metrics = evaluate_sae(model, sae, toy_dataset(50, seed=1), positions="image")   # doctest: +SKIP
    >>> metrics.l0, metrics.explained_variance, metrics.loss_recovered                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .. import positions as _positions
from .train import model_batches, token_activations


@dataclass(frozen=True)
class SAEMetrics:
    """An SAE's quality on a dataset's tokens.

    Attributes:
        n_tokens: The tokens evaluated.
        l0: Mean number of active features per token.
        explained_variance: ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over the tokens.
        mse: Mean squared reconstruction error per element.
        dead_features: Features never active on these tokens.
        dead_fraction: ``dead_features / d_sae``.
        loss_clean: LM loss without the SAE (None when the loss was not measured).
        loss_spliced: LM loss with the SAE spliced in.
        loss_zero: LM loss with the activation zeroed at the same positions.
        loss_recovered: ``(loss_zero - loss_spliced) / (loss_zero - loss_clean)``.
    """

    n_tokens: int
    l0: float
    explained_variance: float
    mse: float
    dead_features: int
    dead_fraction: float
    loss_clean: float | None = None
    loss_spliced: float | None = None
    loss_zero: float | None = None
    loss_recovered: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The metrics as a plain dict (for JSON)."""
        return asdict(self)


def evaluate_sae(
    model: Any,
    sae: Any,
    dataset: Iterable[Any],
    *,
    positions: Any = "all",
    hook_name: str | None = None,
    batch_size: int = 8,
    lm_loss: bool = True,
) -> SAEMetrics:
    """L0, explained variance, dead features and (``lm_loss``) the LM loss recovered, over a dataset.

    Args:
        model: The :class:`~hooked_mllm.HookedMLLM`.
        sae: A SAELens SAE.
        dataset: Samples (as :func:`~hooked_mllm.sae.train.activation_batches` takes them).
        positions: The tokens evaluated, and where the SAE is spliced for the loss.
        hook_name: The hook point (default ``sae.cfg.metadata.hook_name``).
        batch_size: Samples per forward.
        lm_loss: Measure the LM loss clean, spliced and zero-ablated.

    Returns:
        The :class:`SAEMetrics`.

    Examples:
        >>> evaluate_sae(model, sae, data, positions="text").dead_fraction   # doctest: +SKIP
        0.02
    """
    name = model.hook_points.resolve(hook_name or sae.cfg.metadata.hook_name).name
    point = model.hook_points.resolve(name)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    n = active = sq_error = 0.0
    xs, losses = [], {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_batches = 0
    with torch.no_grad():
        for batch in model_batches(model, list(dataset), batch_size):
            x = token_activations(model, batch, name, positions).to(sae.W_enc.device, sae.W_enc.dtype)
            feats = sae.encode(x)
            recon = sae.decode(feats)
            fired |= (feats != 0).any(0).cpu()
            active += float((feats != 0).sum())
            sq_error += float(((x - recon) ** 2).sum())
            n += x.shape[0]
            xs.append(x.cpu())
            if lm_loss:
                n_batches += 1
                losses["clean"] += float(model.run_with_hooks(batch, return_type="loss"))
                splice = (positions or "all") if point.sequence else None
                with model.saes():
                    model.add_sae(sae, hook_name=name, positions=splice)
                    losses["spliced"] += float(model(batch, return_type="loss"))
                losses["zero"] += float(
                    model.run_with_hooks(
                        batch, fwd_hooks=[(name, _zero(point, positions))], return_type="loss"
                    )
                )
    if not n:
        raise ValueError(f"The dataset gave no activations at {name} with positions={positions!r}.")
    everything = torch.cat(xs)
    total_var = float(((everything - everything.mean(0)) ** 2).sum())
    dead = int((~fired).sum())
    result = dict(
        n_tokens=int(n),
        l0=active / n,
        explained_variance=1.0 - sq_error / total_var if total_var > 0 else float("nan"),
        mse=sq_error / everything.numel(),
        dead_features=dead,
        dead_fraction=dead / sae.cfg.d_sae,
    )
    if lm_loss:
        clean, spliced, zero = (losses[k] / n_batches for k in ("clean", "spliced", "zero"))
        recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
        result.update(loss_clean=clean, loss_spliced=spliced, loss_zero=zero, loss_recovered=recovered)
    return SAEMetrics(**result)


def _zero(point: Any, positions: Any) -> Any:
    """A hook function zeroing the value at ``positions`` (everywhere on points without a sequence axis)."""

    def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if not point.sequence:
            return torch.zeros_like(act)
        mask = _positions.resolve(positions or "all", hook.batch, act.shape[1]).to(act.device)
        new = act.clone()
        new[mask] = 0
        return new

    return zero
