"""Feature extraction to a safe, resumable store: one representation per sample and hook point.

:func:`extract` runs a :class:`~hooked_mllm.model.HookedMLLM` over a dataset in batches and
keeps, per sample, the representation a :class:`TokenRule` picks, at one or several hook
points in the same pass (LM points, and vision-tower / projector points for the image rules).
Rules: the last prompt token, a position, the mean or every one of the image tokens, the
position *of* a word or the position *predicting* it (found on decoded text, so byte-level
BPE ``Ġdog`` and SentencePiece ``▁dog`` match ``"dog"``; searched in the greedy answer by
default, never in the prompt unless asked), the mean over a start/end range of the answer or
prompt, or over the whole answer.

The model generates only when the rule needs the answer (or ``predict=True``); the
activations of the answer tokens are then cached *during* generation, not by a second
forward. The store (:mod:`hooked_mllm.concepts._store`) is written atomically every
``shard_size`` samples and when the run stops (on an error too); a locked folder refuses a
second writer; a resumed run refuses features of another model, hook, rule, template or
sample content, and checks every shard's checksum first. Data-parallel processes (``rank=`` /
``world_size=``, or a ``torchrun`` process group) each extract every ``world_size``-th sample
into per-rank parts of one store, merged in dataset order when all are done
(:mod:`hooked_mllm.concepts._shards`), so the store equals a one-process run.

Examples:
    >>> feats = extract(model, toy_dataset(200), ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post"],
    ...                 token=TokenRule("last"), out="features/toy")        # doctest: +SKIP
    >>> Features.load("features/toy")["blocks.3.hook_resid_post"].features.shape  # doctest: +SKIP
    torch.Size([200, 128])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..model import HookedMLLM
from ._parallel import Split, agree, resolve_split
from ._shards import MANIFEST, ShardWriter, merge_parts, part_name, ranks_complete, read_parts
from ._store import (
    FORMAT_VERSION,
    Features,
    check_identity,
    config_fingerprint,
    folder_lock,
    read_manifest,
    remove_leftovers,
    verify_shard,
    weights_fingerprint,
)
from ._tokens import find_subtokens, token_spans
from .data import Sample, folder_dataset, iter_samples, load_image, sample_fingerprint, toy_dataset

__all__ = ["RULES", "TokenRule", "extract", "Features", "Sample", "folder_dataset", "toy_dataset"]

RULES = ("last", "position", "image_mean", "image_each", "token", "predicting", "answer_mean", "range")
IMAGE_RULES = ("image_mean", "image_each")


@dataclass(frozen=True)
class TokenRule:
    """Which representation of a sample to keep.

    Attributes:
        kind: ``"last"`` (last prompt token), ``"position"`` (``position`` among the prompt's
            non-pad tokens), ``"image_mean"``, ``"image_each"`` (``[n_image_tokens, d]`` per sample),
            ``"token"`` (the position of a word), ``"predicting"`` (the position whose output
            predicts the word: the one before it), ``"range"`` (mean over tokens ``start:end`` of
            the searched text), ``"answer_mean"`` (mean over the generated answer).
        token: The word, or a tuple of words (a token class: the first of them to occur counts).
        position: For ``"position"``.
        search: Where words and ranges are looked for: ``"answer"`` (default) or ``"prompt"``
            (its text tokens only).
        reduce: Over a word's sub-tokens: ``"first"`` (default), ``"last"`` or ``"mean"``.
        occurrence: Which occurrence of the word: ``"first"`` or ``"last"``.
        case_sensitive: Match case exactly (default: any case).
        whole_word: Match whole words only (default), not inside longer words.
        start: Start of the token range for ``"range"`` (Python slice semantics, negatives allowed).
        end: End of that range (exclusive, as a slice).

    Examples:
        >>> TokenRule("predicting", token=("red", "blue", "green"), reduce="mean").needs_answer
        True
    """

    kind: str = "last"
    token: str | tuple[str, ...] | None = None
    position: int | None = None
    search: str = "answer"
    reduce: str = "first"
    occurrence: str = "first"
    case_sensitive: bool = False
    whole_word: bool = True
    start: int | None = None
    end: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"Unknown token rule {self.kind!r}; use one of {', '.join(RULES)}")
        if isinstance(self.token, list):
            object.__setattr__(self, "token", tuple(self.token))
        if self.kind in ("token", "predicting") and not self.token:
            raise ValueError(f"Token rule {self.kind!r} needs token='...' (a word or a tuple of words)")
        if self.kind == "position" and self.position is None:
            raise ValueError("Token rule 'position' needs position=")
        if self.search not in ("answer", "prompt"):
            raise ValueError(f"search must be 'answer' or 'prompt', not {self.search!r}")
        if self.reduce not in ("first", "last", "mean"):
            raise ValueError(f"reduce must be 'first', 'last' or 'mean', not {self.reduce!r}")
        if self.occurrence not in ("first", "last"):
            raise ValueError(f"occurrence must be 'first' or 'last', not {self.occurrence!r}")

    @property
    def words(self) -> tuple[str, ...]:
        return (self.token,) if isinstance(self.token, str) else tuple(self.token or ())

    @property
    def needs_answer(self) -> bool:
        return self.kind == "answer_mean" or (
            self.kind in ("token", "predicting", "range") and self.search == "answer"
        )


def _positions(
    rule: TokenRule,
    batch: Any,
    row: int,
    prompt_len: int,
    answer: list[int],
    tokenizer: Any,
    sample_id: str = "",
) -> list[int]:
    """Sequence positions (prompt then answer) the rule picks for one row; LookupError (naming the sample)
    when absent."""
    valid = (~batch.pad_mask[row]).nonzero().flatten().tolist()
    if rule.kind == "last":
        return [valid[-1]]
    if rule.kind == "position":
        position = rule.position
        assert position is not None  # TokenRule("position") requires it
        if not -len(valid) <= position < len(valid):
            raise LookupError(
                f"position {position} is outside the {len(valid)} prompt tokens of sample {sample_id!r}"
            )
        return [valid[position]]
    if rule.kind in IMAGE_RULES:
        return batch.image_mask[row].nonzero().flatten().tolist()
    if rule.kind == "answer_mean" or rule.search == "answer":
        region = list(range(prompt_len, prompt_len + len(answer)))
        ids = answer
    else:
        image = batch.image_mask[row]
        region = [p for p in valid if not bool(image[p])]
        ids = [int(batch.input_ids[row, p]) for p in region]
    if rule.kind in ("answer_mean", "range"):
        picked = region[rule.start : rule.end] if rule.kind == "range" else region
        if not picked:
            raise LookupError(
                f"no {rule.search} tokens in range [{rule.start}:{rule.end}] of sample {sample_id!r}"
            )
        return picked
    spans, text = token_spans(tokenizer, ids)
    sub = find_subtokens(
        spans,
        text,
        rule.words,
        occurrence=rule.occurrence,
        case_sensitive=rule.case_sensitive,
        whole_word=rule.whole_word,
    )
    if not sub:
        raise LookupError(
            f"{' / '.join(rule.words)!r} not found in the {rule.search} of sample {sample_id!r} ({text!r})"
        )
    picked = [region[i] - (1 if rule.kind == "predicting" else 0) for i in sub]
    return picked if rule.reduce == "mean" else [picked[0] if rule.reduce == "first" else picked[-1]]


def _reduce(acts: Tensor, positions: list[int], rule: TokenRule) -> Tensor:
    if rule.kind == "image_each":
        return acts[positions]
    return acts[positions].mean(0) if len(positions) > 1 else acts[positions[0]]


def _identity(
    model: HookedMLLM,
    hooks: list[str],
    rule: TokenRule,
    chat_template: bool,
    max_new_tokens: int,
    dataset_name: str | None,
) -> dict:
    from .. import __version__

    config: Any = model.hf_model.config  # the HF config
    template = getattr(model.processor, "chat_template", None) or getattr(
        getattr(model.processor, "tokenizer", None), "chat_template", None
    )
    return {
        "model": {
            "name": getattr(config, "_name_or_path", "") or "",
            "class": model.cfg.model_class,
            "config_sha256": config_fingerprint(config.to_dict()),
            "weights_digest": weights_fingerprint(model.hf_model),
        },
        "hooks": hooks,
        "rule": asdict(rule),
        "template": {
            "chat_template": chat_template,
            "template_sha256": hashlib.sha256(str(template).encode()).hexdigest() if template else None,
            "max_new_tokens": max_new_tokens if rule.needs_answer else None,
            "dataset": dataset_name,
        },
        "library": {"hooked_mllm": __version__, "format": FORMAT_VERSION},
    }


def _open_store(path: Path, identity: dict) -> dict:
    file = path / "manifest.json"
    if not file.exists():
        return dict(identity, shards=[], skipped=[])
    manifest = read_manifest(file)
    check_identity(path, manifest, identity)
    for shard in manifest["shards"]:
        verify_shard(path, shard)
    # A shard file written after the manifest's last update is not listed: it is rewritten on resume.
    return manifest


def _done(*manifests: dict) -> dict[str, str | None]:
    """Sample id -> fingerprint of every sample (extracted or skipped) the manifests hold."""
    done: dict[str, str | None] = {}
    for manifest in manifests:
        done.update(
            {
                i: k
                for shard in manifest["shards"]
                for i, k in zip(shard["ids"], shard.get("keys") or [None] * len(shard["ids"]))
            }
        )
        done.update({s["id"]: s.get("key") for s in manifest["skipped"]})
    return done


def _cache_hooks(
    points: list[Any], store: dict[str, list[Tensor]], keep_steps: bool
) -> list[tuple[str, Any]]:
    def fn(act: Tensor, hook: Any) -> None:
        if hook.step == 0 or (keep_steps and hook.point.sequence):
            store[hook.name].append(act.detach())

    return [(p.name, fn) for p in points]


@dataclass(frozen=True)
class _Settings:
    """How :func:`_run` batches, generates and reports (the validated arguments of :func:`extract`)."""

    rule: TokenRule
    batch_size: int
    max_new_tokens: int
    progress: bool
    skip_missing: bool
    generate: bool
    chat_template: bool
    split: Split = Split()


def extract(
    model: HookedMLLM,
    dataset: Iterable[Any],
    hook: str | Sequence[str],
    token: TokenRule | str = "last",
    *,
    batch_size: int = 8,
    out: str | os.PathLike[str] | None = None,
    max_new_tokens: int = 12,
    shard_size: int = 256,
    progress: bool = True,
    skip_missing: bool = True,
    predict: bool = False,
    chat_template: bool = True,
    dataset_name: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Features:
    """Extract one representation per sample at each of ``hook`` and (optionally) stream it to ``out``.

    Args:
        hook: A hook name or a list of them, all read in the same pass: LM points
            (``blocks.3.hook_resid_post``, ...) with any rule; vision-tower and projector points
            (``vision.blocks.1.hook_resid_post``, ``projector.hook_out``) with ``image_mean`` /
            ``image_each`` and one image per sample.
        token: A :class:`TokenRule` or its kind.
        out: A folder for shards and ``manifest.json``. An existing store there is resumed if it
            holds comparable features (same model weights and config, hooks, rule, template,
            library); otherwise the error lists what differs. Locked while the run writes.
        max_new_tokens: Greedy answer length when the rule needs the answer (or ``predict``).
        shard_size: Samples per shard; progress is saved every ``shard_size`` samples and when the
            run stops, also on an error or an interrupt.
        skip_missing: Samples whose word or range is not found are recorded under
            ``manifest["skipped"]`` (else raise).
        predict: Also generate and record each sample's greedy answer when the rule does not
            need it (the prompt activations are cached during that generation: one pass).
        chat_template: Wrap prompts in the processor's chat template.
        dataset_name: A name recorded in (and checked against) the store's identity.
        rank: Extract only the samples at dataset positions ``rank``, ``rank + world_size``,
            ... as one of ``world_size`` data-parallel processes writing into the same ``out``
            (default: from an initialized ``torch.distributed`` process group, as under
            ``torchrun``, else one process). Each rank writes its own part files; when the
            last rank is done, the parts are merged into the store in dataset order, so it reads
            exactly as a one-process run. With a process group every rank then returns the
            whole store and fails if any rank failed; without one, start the ranks together
            (a rank that finishes before another starts merges only what is done).
        world_size: The number of data-parallel processes (see ``rank``).

    Returns:
        The :class:`Features` (memory-mapped from ``out`` when given).

    Examples:
        >>> samples = folder_dataset("val2017", "Describe the image.")  # doctest: +SKIP
        >>> rule = TokenRule("predicting", token="dog", reduce="mean")  # doctest: +SKIP
        >>> feats = extract(model, samples, "blocks.31.hook_resid_post", rule,
        ...                 out="features/dog")  # doctest: +SKIP
    """
    rule = TokenRule(token) if isinstance(token, str) else token
    names = [hook] if isinstance(hook, str) else list(hook)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"Give one or more distinct hook names, got {names!r}")
    points = [model.hook_points.resolve(name) for name in names]
    for point in points:
        if point.needs_eager:
            raise ValueError(f"{point.name} is an attention pattern; extract a residual, MLP or head output")
        if not point.sequence and rule.kind not in IMAGE_RULES:
            raise ValueError(
                f"{point.name} is on the {point.stream} stream, not the LM sequence: use the "
                f"image_mean or image_each rule there (got {rule.kind!r})"
            )
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    hooks = [p.name for p in points]
    split = resolve_split(rank, world_size)
    settings = _Settings(
        rule=rule,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        skip_missing=skip_missing,
        generate=rule.needs_answer or predict,
        chat_template=chat_template,
        split=split,
    )
    identity = _identity(model, hooks, rule, chat_template, max_new_tokens, dataset_name)
    if out is None:
        if split.world_size > 1:
            raise ValueError(
                f"Data-parallel extraction (rank {split.rank} of {split.world_size}) needs "
                "out=: the processes meet in one feature store"
            )
        writer = ShardWriter(
            hooks, path=None, manifest=dict(identity, shards=[], skipped=[]), shard_size=shard_size
        )
        _run(model, dataset, points, writer, {}, settings)
        return Features.from_parts(writer.memory, writer.manifest)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    if split.world_size > 1:
        return _extract_rank(model, dataset, points, path, identity, shard_size, settings)
    with folder_lock(path):
        remove_leftovers(path)  # temporary files of a run killed between writing and renaming
        manifest = _open_store(path, identity)
        parts = read_parts(path, identity)
        if not parts:
            writer = ShardWriter(hooks, path=path, manifest=manifest, shard_size=shard_size)
            _run(model, dataset, points, writer, _done(manifest), settings)
        else:  # an interrupted data-parallel run left parts: add to them, then merge all in dataset order
            own = parts.get(f"{part_name(1, 0)}.json") or dict(identity, shards=[], skipped=[])
            writer = ShardWriter(hooks, path=path, manifest=own, shard_size=shard_size, part=(1, 0))
            _run(model, dataset, points, writer, _done(manifest, *parts.values()), settings)
            merge_parts(path, manifest, identity, shard_size)
    return Features.load(path, verify=False)


def _extract_rank(
    model: HookedMLLM,
    dataset: Iterable[Any],
    points: list[Any],
    path: Path,
    identity: dict,
    shard_size: int,
    settings: _Settings,
) -> Features:
    """One rank of a data-parallel extraction: write this rank's parts, then merge when every rank is done.

    The ranks hold the store's lock shared (a one-process writer is refused) and each its own
    part lock. When a rank is done it waits for the exclusive lock, which it gets once no rank
    is writing, and merges the parts if every rank of this run has finished.
    """
    split = settings.split
    name = part_name(split.world_size, split.rank)
    error: BaseException | None = None
    try:
        with folder_lock(path, shared=True), folder_lock(path, name=f".lock-{name}"):
            manifest = _open_store(path, identity)
            parts = read_parts(path, identity)
            own = parts.get(f"{name}.json") or dict(identity, shards=[], skipped=[])
            own["complete"] = False
            writer = ShardWriter(
                [p.name for p in points],
                path=path,
                manifest=own,
                shard_size=shard_size,
                part=(split.world_size, split.rank),
            )
            writer.save()
            _run(model, dataset, points, writer, _done(manifest, *parts.values()), settings)
            own["complete"] = True
            writer.save()
        with folder_lock(path, wait=True):
            if ranks_complete(path, split.world_size):
                file = path / MANIFEST
                manifest = read_manifest(file) if file.exists() else dict(identity, shards=[], skipped=[])
                merge_parts(path, manifest, identity, shard_size)
    except BaseException as caught:  # every rank must reach agree(), or the others would wait for it forever
        error = caught
    agree(split, error)
    if not (path / MANIFEST).exists():  # no process group, and another rank has not finished yet
        return Features.from_parts([], dict(identity, shards=[], skipped=[]))
    return Features.load(path, verify=False)


def _run(
    model: HookedMLLM,
    dataset: Iterable[Any],
    points: list[Any],
    writer: ShardWriter,
    done: dict[str, str | None],
    settings: _Settings,
) -> None:
    """Extract the samples of ``dataset`` this rank owns and ``done`` lacks; flush and save also on errors."""
    total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    if total is not None:
        total = len(range(settings.split.rank, total, settings.split.world_size))
    bar = tqdm(
        total=total,
        desc=f"extract {', '.join(p.name for p in points)}",
        unit="sample",
        disable=not settings.progress,
    )
    seen: set[str] = set()
    chunk: list[tuple[int, Sample, str]] = []
    try:
        for index, sample in enumerate(iter_samples(dataset)):
            if sample.id in seen:
                raise ValueError(f"Sample id {sample.id!r} occurs twice in the dataset; ids must be unique")
            seen.add(sample.id)
            if not settings.split.owns(index):
                continue
            key = sample_fingerprint(sample)
            if sample.id in done:
                if done[sample.id] is not None and done[sample.id] != key:
                    raise ValueError(
                        f"Sample {sample.id!r} is in the store with another prompt or image; "
                        "features of different inputs cannot share an id. Use another out= folder."
                    )
                bar.update(1)
                continue
            chunk.append((index, sample, key))
            if len(chunk) == settings.batch_size:
                _batch(model, chunk, points, writer, settings)
                bar.update(len(chunk))
                chunk = []
                if writer.full:
                    writer.flush()
        if chunk:
            _batch(model, chunk, points, writer, settings)
            bar.update(len(chunk))
    finally:
        bar.close()  # first: an error below (a full disk) is then printed on a line of its own
        writer.flush()
        writer.save()


def _batch(
    model: HookedMLLM,
    chunk: list[tuple[int, Sample, str]],
    points: list[Any],
    writer: ShardWriter,
    settings: _Settings,
) -> None:
    rule, tokenizer = settings.rule, model.processor.tokenizer
    samples = [s for _, s, _ in chunk]
    batch = model.prepare(
        images=[load_image(s.image) for s in samples],
        prompts=[s.prompt for s in samples],
        chat_template=settings.chat_template,
    )
    store: dict[str, list[Tensor]] = {p.name: [] for p in points}
    hooks = _cache_hooks(points, store, keep_steps=rule.needs_answer)
    answers: list[list[int]] = [[] for _ in samples]
    texts = [""] * len(samples)
    if settings.generate:
        # One step more than the answer length, so the last answer token is also run through the model.
        max_new_tokens = settings.max_new_tokens
        steps = max_new_tokens + 1 if rule.needs_answer else max_new_tokens
        gen = model.generate(batch, max_new_tokens=steps, fwd_hooks=hooks)
        eos = tokenizer.eos_token_id
        for row, ids in enumerate(gen.new_tokens.tolist()):
            ids = ids[:max_new_tokens]
            answers[row] = ids[: ids.index(eos)] if eos in ids else ids
            texts[row] = tokenizer.decode(answers[row], skip_special_tokens=True).strip()
    else:
        model.run_with_hooks(batch, fwd_hooks=hooks)
    acts = {}
    for point in points:
        parts = store[point.name]
        if not parts:
            raise RuntimeError(
                f"{point.name} did not fire during the run; it cannot be extracted for this model"
            )
        acts[point.name] = torch.cat(parts, dim=1) if point.sequence else parts[0]
        if not point.sequence and acts[point.name].shape[0] != len(samples):
            raise ValueError(
                f"{point.name} has {acts[point.name].shape[0]} images for {len(samples)} samples; "
                "vision and projector points need exactly one image per sample"
            )
    prompt_len = batch.shape[1]
    for row, (index, sample, key) in enumerate(chunk):
        try:
            positions = _positions(rule, batch, row, prompt_len, answers[row], tokenizer, sample_id=sample.id)
        except LookupError as error:
            if not settings.skip_missing:
                raise
            writer.skip(index, sample.id, key, str(error), texts[row])
            continue
        rows = {}
        for point in points:
            act = acts[point.name][row]
            if point.sequence:
                feature = _reduce(act, positions, rule)
            else:
                feature = act if rule.kind == "image_each" else act.mean(0)
            rows[point.name] = feature.float().cpu()
        writer.add(index, sample.id, key, texts[row], rows)
