"""Training SAELens SAEs on activations streamed from a :class:`~hooked_mllm.HookedMLLM`.

:func:`activation_batches` runs the model over a dataset (the :mod:`hooked_mllm.concepts.data`
conventions: :class:`~hooked_mllm.concepts.data.Sample`, ``(image, prompt)`` or ``(id, image,
prompt)`` items; ``image`` None for a text-only model) and yields shuffled ``[n, d_in]`` batches of
one hook point's activations at the chosen tokens (``"image"``, ``"text"``, ``"all"`` or any
position selector; every patch of a vision-tower or projector point). :func:`train_sae` feeds
that stream to SAELens' own trainer (``SAETrainer``: its architectures, losses, schedules,
dead-feature statistics and progress bar) and saves the result in SAELens' format
(``SAE.load_from_disk`` reads it back; ``cfg.metadata.hook_name`` names the hook point, so
``model.add_sae(sae)`` splices it where it was trained). Checkpoints keep the trainer's state, and
``resume_from=`` continues from one (weights, optimizer, schedule and counters; the activation
stream starts afresh with another shuffle).

Examples:
    >>> from hooked_mllm.concepts import toy_dataset                                  # doctest: +SKIP
    >>> sae = train_sae(model, toy_dataset(200), "blocks.2.hook_resid_post", positions="image",
    ...                 architecture="topk", k=16, total_tokens=50_000, out="saes/r2")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import positions as _positions
from ..concepts.data import iter_samples, load_image
from ._splice import require_sae_lens

logger = logging.getLogger(__name__)

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
"""The SAELens architectures :func:`train_sae` builds (SAELens' own training configs)."""


def model_batches(model: Any, dataset: Iterable[Any], batch_size: int) -> Iterator[Any]:
    """The dataset as prepared model batches of up to ``batch_size`` samples (text-only when no sample
    has an image)."""
    chunk: list[Any] = []

    def prepared(samples: list[Any]) -> Any:
        images = [load_image(s.image) for s in samples]
        prompts = [s.prompt for s in samples]
        if all(image is None for image in images):
            return model.to_batch(prompts)
        if any(image is None for image in images):
            raise ValueError(
                "A batch mixes samples with and without images; give every sample an image or none."
            )
        return model.prepare(images=images, prompts=prompts)

    for sample in iter_samples(dataset):
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield prepared(chunk)
            chunk = []
    if chunk:
        yield prepared(chunk)


def token_activations(model: Any, batch: Any, hook_name: str, positions: Any = "all") -> Float[Tensor, "n d"]:
    """One hook point's activations of one batch as ``[n_tokens, d]`` rows, at the chosen tokens in
    (row, position) order (per-head points flattened to ``heads * d_head``).

    ``positions`` selects sequence positions of language-model points (``"image"``, ``"text"``,
    ``"all"``: the prompt without padding, or any selector); a vision-tower or projector point gives
    every patch of every image and takes only ``"all"``.

    Examples:
        >>> rows = token_activations(model, batch, "blocks.2.hook_resid_post", "image")  # doctest: +SKIP
    """
    point = model.hook_points.resolve(hook_name)
    _, cache = model.run_with_cache(batch, names_filter=point.name)
    act = cache[point.name]
    if point.heads is not None:
        act = act.flatten(-2)
    if point.sequence:
        mask = _positions.resolve(positions, batch, act.shape[1]).to(act.device)
        return act[mask]
    if positions not in ("all", None):
        raise ValueError(
            f"{point.name} has no language-model sequence axis: its rows are every patch of every image, so "
            f"positions must be 'all', not {positions!r}."
        )
    return act.reshape(-1, act.shape[-1])


def activation_batches(
    model: Any,
    dataset: Iterable[Any],
    hook_name: str,
    *,
    positions: Any = "all",
    batch_size: int = 8,
    train_batch_size: int = 256,
    buffer_batches: int = 8,
    epochs: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[Float[Tensor, "n d"]]:
    """Shuffled ``[train_batch_size, d]`` activation batches of one hook point, streamed from the model.

    The model runs over ``dataset`` ``batch_size`` samples at a time (again and again when ``epochs``
    is None); rows collect in a buffer of ``buffer_batches * train_batch_size``, shuffled before they
    are cut into batches (the last, shorter batch of a finite stream included).

    Args:
        model: The :class:`~hooked_mllm.HookedMLLM`.
        dataset: Samples (``Sample``, ``(image, prompt)`` or ``(id, image, prompt)``); a list when
            ``epochs`` is not 1 (it is iterated again).
        hook_name: The hook point.
        positions: The tokens (:func:`token_activations`).
        batch_size: Samples per model forward.
        train_batch_size: Rows per yielded batch.
        buffer_batches: Shuffle buffer size, in yielded batches.
        epochs: Passes over the dataset (None: endless).
        seed: Seed of the shuffle.
        device: Where the yielded batches go.

    Examples:
        >>> hook = "blocks.2.hook_resid_post"
        >>> stream = activation_batches(model, data, hook, positions="image")  # doctest: +SKIP
        >>> next(stream).shape                                                  # doctest: +SKIP
        torch.Size([256, 128])
    """
    if train_batch_size < 1 or batch_size < 1 or buffer_batches < 1:
        raise ValueError("batch_size, train_batch_size and buffer_batches must be at least 1.")
    data = list(dataset) if epochs != 1 else dataset
    generator = torch.Generator().manual_seed(seed)
    buffer: list[Tensor] = []
    held = 0
    epoch = 0
    while epochs is None or epoch < epochs:
        produced = False
        for batch in model_batches(model, data, batch_size):
            rows = token_activations(model, batch, hook_name, positions).detach().to("cpu", torch.float32)
            produced = produced or rows.shape[0] > 0
            buffer.append(rows)
            held += rows.shape[0]
            if held >= buffer_batches * train_batch_size:
                mixed = torch.cat(buffer)[torch.randperm(held, generator=generator)]
                cut = (held // train_batch_size) * train_batch_size
                yield from (chunk.to(device) for chunk in mixed[:cut].split(train_batch_size))
                buffer, held = [mixed[cut:]], held - cut
        if not produced:
            raise ValueError(f"The dataset gave no activations at {hook_name} with positions={positions!r}.")
        epoch += 1
    if held:
        mixed = torch.cat(buffer)[torch.randperm(held, generator=generator)]
        yield from (chunk.to(device) for chunk in mixed.split(train_batch_size))


def training_config(architecture: str, d_in: int, d_sae: int, **options: Any) -> Any:
    """The SAELens training config of ``architecture`` (:data:`ARCHITECTURES`); ``options`` are its
    fields (``l1_coefficient``, ``k``, ``l0_coefficient``, ``normalize_activations`` ...)."""
    sae_lens = require_sae_lens()
    classes = {
        "standard": sae_lens.StandardTrainingSAEConfig,
        "topk": sae_lens.TopKTrainingSAEConfig,
        "batchtopk": sae_lens.BatchTopKTrainingSAEConfig,
        "jumprelu": sae_lens.JumpReLUTrainingSAEConfig,
    }
    if architecture not in classes:
        raise ValueError(f"Unknown SAE architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}.")
    try:
        return classes[architecture](d_in=d_in, d_sae=d_sae, **options)
    except TypeError as error:
        raise ValueError(f"Bad option for a {architecture} SAE: {error}") from error


def train_sae(
    model: Any,
    dataset: Iterable[Any],
    hook_name: str,
    *,
    positions: Any = "all",
    architecture: str = "standard",
    d_sae: int | None = None,
    expansion_factor: int = 4,
    total_tokens: int = 20_000,
    train_batch_size: int = 256,
    lr: float = 3e-4,
    batch_size: int = 8,
    out: str | Path | None = None,
    n_checkpoints: int = 0,
    resume_from: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    b_dec_init: str = "mean",
    **sae_options: Any,
) -> Any:
    """Train a SAELens SAE on one hook point's activations with SAELens' ``SAETrainer``.

    Args:
        model: The :class:`~hooked_mllm.HookedMLLM` whose activations are read.
        dataset: Samples, as :func:`activation_batches` takes them (a list: it is cycled).
        hook_name: The hook point (any: language model, vision tower, projector).
        positions: The tokens trained on (``"image"``, ``"text"``, ``"all"`` or a selector).
        architecture: ``"standard"`` (ReLU + L1), ``"topk"``, ``"batchtopk"`` or ``"jumprelu"``.
        d_sae: The number of features (default ``expansion_factor * d_in``).
        expansion_factor: ``d_sae / d_in`` when ``d_sae`` is not given.
        total_tokens: Training rows in all.
        train_batch_size: Rows per optimiser step.
        lr: Adam's learning rate.
        batch_size: Samples per model forward.
        out: Save the trained SAE there, in SAELens' format (``cfg.json`` + ``sae_weights.safetensors``),
            and checkpoints under ``out/checkpoints``.
        n_checkpoints: Checkpoints (weights and trainer state) saved during training (needs ``out``).
        resume_from: A checkpoint folder to continue from.
        seed: Seed of the SAE's initialisation and of the activation shuffle.
        device: Where the SAE trains.
        b_dec_init: ``"mean"`` starts the decoder bias at the mean activation (of 4 batches, in SAELens'
            scaled units), so training starts from the mean rather than from zero; ``"zeros"`` keeps
            SAELens' initialisation.
        **sae_options: Fields of SAELens' training config (``l1_coefficient``, ``k``, ...);
            ``normalize_activations`` defaults to ``"expected_average_only_in"`` (SAELens scales the
            activations to norm ``sqrt(d_in)`` while training and folds the scale into the saved weights).

    Returns:
        The trained SAE, as SAELens' inference ``SAE`` (``cfg.metadata.hook_name`` = the hook point's name).

    Examples:
        >>> sae = train_sae(model, toy_dataset(100), "blocks.1.hook_resid_post", positions="text",
        ...                 architecture="topk", k=8, total_tokens=4096, out="saes/r1")  # doctest: +SKIP
        >>> model.add_sae(sae)                                                         # doctest: +SKIP
    """
    sae_lens = require_sae_lens()
    from sae_lens.config import SAETrainerConfig

    point = model.hook_points.resolve(hook_name)
    data = list(dataset)
    probe = token_activations(model, next(model_batches(model, data[:1], 1)), point.name, positions)
    d_in = probe.shape[-1]
    if n_checkpoints and out is None:
        raise ValueError("n_checkpoints needs out= (where the checkpoints are written).")
    if b_dec_init not in ("mean", "zeros"):
        raise ValueError(f"b_dec_init must be 'mean' or 'zeros', not {b_dec_init!r}.")
    if total_tokens < train_batch_size:
        raise ValueError(
            f"total_tokens ({total_tokens}) must be at least train_batch_size ({train_batch_size})."
        )
    torch.manual_seed(seed)
    # activations scaled to norm sqrt(d_in) while training (the scale is folded into the saved weights):
    # the sparsity coefficients then mean the same at every hook point and model
    sae_options.setdefault("normalize_activations", "expected_average_only_in")
    cfg = training_config(architecture, d_in, d_sae or expansion_factor * d_in, device=device, **sae_options)
    cfg.metadata.hook_name = point.name
    cfg.metadata.model_name = model.cfg.model_class
    cfg.metadata.model_class_name = "HookedMLLM"
    cfg.metadata.context_size = None
    sae = sae_lens.TrainingSAE.from_dict(cfg.to_dict())
    if resume_from is not None:
        state = sae_lens.TrainingSAE.load_from_disk(resume_from, device=device).state_dict()
        sae.load_state_dict(state)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_tokens,
        train_batch_size_samples=train_batch_size,
        lr=lr,
        lr_end=lr / 10,  # (used by decaying schedules only; SAELens' runner default)
        device=device,
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(Path(out) / "checkpoints") if out is not None else None,
        save_final_checkpoint=False,
        dead_feature_window=max(1, math.ceil(total_tokens / train_batch_size) // 2),
        feature_sampling_window=max(1, math.ceil(total_tokens / train_batch_size)),
        n_batches_for_norm_estimate=8,
    )
    stream = activation_batches(
        model,
        data,
        point.name,
        positions=positions,
        batch_size=batch_size,
        train_batch_size=train_batch_size,
        seed=seed + (0 if resume_from is None else 1),
        device=device,
    )
    trainer = sae_lens.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=stream)
    if resume_from is None and b_dec_init == "mean":
        _init_b_dec(trainer, stream, d_in)
    if resume_from is not None:
        trainer.load_trainer_state(resume_from)
        logger.info("Resuming %s from %s at %d tokens", point.name, resume_from, trainer.n_training_samples)
    trained = trainer.fit()
    inference = _to_inference(sae_lens, trained, out)
    return inference


def _init_b_dec(trainer: Any, stream: Iterator[Tensor], d_in: int) -> None:
    """The decoder bias set to the mean of a few activation batches, after SAELens' scaler has estimated
    its scale from the stream (``fit`` then keeps that estimate)."""
    if trainer.sae.cfg.normalize_activations == "expected_average_only_in":
        trainer.activation_scaler.estimate_scaling_factor(
            d_in=d_in,
            data_provider=stream,
            n_batches_for_norm_estimate=trainer.cfg.n_batches_for_norm_estimate,
        )
    elif trainer.sae.cfg.normalize_activations not in ("none", None):
        return  # (whitening: SAELens' own start)
    sample = torch.cat([next(stream) for _ in range(4)]).to(trainer.sae.b_dec.device)
    with torch.no_grad():
        trainer.sae.b_dec.copy_(trainer.activation_scaler(sample).mean(0))


def _to_inference(sae_lens: Any, trained: Any, out: str | Path | None) -> Any:
    """The inference SAE of a trained one (saved to ``out`` in SAELens' format if given)."""
    if out is not None:
        trained.save_inference_model(out)
        return sae_lens.SAE.load_from_disk(out, device=str(trained.W_enc.device)).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        return sae_lens.SAE.load_from_disk(tmp, device=str(trained.W_enc.device)).eval()
