"""Feature extraction to disk: one representation per sample, streamed in safetensors shards.

:func:`extract` runs a :class:`~hooked_mllm.model.HookedMLLM` over a dataset in batches and
keeps, per sample, the representation a :class:`TokenRule` picks at one hook point: the last
prompt token, a position, the mean or every one of the image tokens, the position *of* a
token or the position *predicting* it (searched in the greedy answer by default, never in
the prompt, so a whitespace or prompt token is not matched by mistake), or the mean over the
answer. Shards (``shard_00000.safetensors``) and a JSON manifest (model, hook, rule, sample
ids, predictions) are written atomically after each batch; a run that stops resumes where it
stopped, without duplicating or losing samples. :class:`Features` loads them back.

Datasets: any iterable of :class:`Sample` (or ``(image, prompt)`` / ``(id, image, prompt)``
tuples), :func:`folder_dataset`, and :func:`toy_dataset`.

Example:
    >>> feats = extract(model, toy_dataset(200), "blocks.3.hook_resid_post", token=TokenRule("last"),
    ...                 out="features/toy")        # doctest: +SKIP
    >>> Features.load("features/toy").features.shape  # doctest: +SKIP
    torch.Size([200, 128])
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from ..model import HookedMLLM

RULES = ("last", "position", "image_mean", "image_each", "token", "predicting", "answer_mean")


@dataclass(frozen=True)
class TokenRule:
    """Which representation of a sample to keep.

    Attributes:
        kind: ``"last"`` (last prompt token), ``"position"`` (``position``), ``"image_mean"``,
            ``"image_each"`` (``[n_image_tokens, d]`` per sample), ``"token"`` (the position
            of ``token``), ``"predicting"`` (the position whose output predicts ``token``: the
            one before it), ``"answer_mean"`` (mean over the generated answer).
        token: The token text for ``"token"`` / ``"predicting"``.
        position: For ``"position"``.
        search: Where ``token`` is searched: ``"answer"`` (default) or ``"prompt"``.
    """

    kind: str = "last"
    token: str | None = None
    position: int | None = None
    search: str = "answer"

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ValueError(f"Unknown token rule {self.kind!r}; use one of {', '.join(RULES)}")
        if self.kind in ("token", "predicting") and not self.token:
            raise ValueError(f"Token rule {self.kind!r} needs token='...'")
        if self.kind == "position" and self.position is None:
            raise ValueError("Token rule 'position' needs position=")
        if self.search not in ("answer", "prompt"):
            raise ValueError("search must be 'answer' or 'prompt'")

    @property
    def needs_answer(self) -> bool:
        return self.kind == "answer_mean" or (self.kind in ("token", "predicting") and self.search == "answer")


@dataclass(frozen=True)
class Sample:
    """One dataset record."""

    id: str
    image: Any
    prompt: str


def _samples(dataset: Iterable[Any]) -> Iterator[Sample]:
    for i, item in enumerate(dataset):
        if isinstance(item, Sample):
            yield item
        elif isinstance(item, tuple) and len(item) == 2:
            yield Sample(str(i), item[0], item[1])
        elif isinstance(item, tuple) and len(item) == 3:
            yield Sample(str(item[0]), item[1], item[2])
        else:
            raise TypeError(f"Dataset item {i} is a {type(item).__name__}; give Sample, (image, prompt) or "
                            "(id, image, prompt)")


def folder_dataset(folder: str | os.PathLike[str], prompt: str, suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> list[Sample]:
    """Every image in ``folder`` (sorted by name) with the same ``prompt``."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)
    if not paths:
        raise ValueError(f"No images ({', '.join(suffixes)}) in {folder}")
    return [Sample(p.name, Image.open(p).convert("RGB"), prompt) for p in paths]


def toy_dataset(n: int, seed: int = 0, prompt: str | None = None, qtype: str | None = None) -> list[Sample]:
    """``n`` toy-world scenes with a caption prompt (default) or their first question of ``qtype``."""
    from ..toy import World
    from ..toy.processor import CAPTION_PROMPT

    out = []
    for scene in World(seed=seed).sample(n):
        text = prompt or CAPTION_PROMPT
        if qtype is not None:
            qas = scene.questions_of(qtype)
            if not qas:
                continue
            text = qas[0].question
        out.append(Sample(f"{seed}:{scene.index}", scene.image, text))
    return out


def _write_atomic(path: Path, writer: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _select(rule: TokenRule, acts: Tensor, batch: Any, row: int, prompt_len: int, answer_ids: list[int],
            tokenizer: Any) -> Tensor:
    """The representation of one row from ``acts`` ``[pos, d]`` (prompt + answer positions)."""
    valid = (~batch.pad_mask[row]).nonzero().flatten()
    last = int(valid[-1])
    if rule.kind == "last":
        return acts[last]
    if rule.kind == "position":
        return acts[valid[rule.position]]
    if rule.kind in ("image_mean", "image_each"):
        image = acts[batch.image_mask[row].to(acts.device)]
        return image.mean(0) if rule.kind == "image_mean" else image
    if rule.kind == "answer_mean":
        if not answer_ids:
            raise ValueError(f"Row {row} generated no answer tokens to average")
        return acts[prompt_len : prompt_len + len(answer_ids)].mean(0)
    ids = tokenizer.encode(rule.token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{rule.token!r} is {len(ids)} tokens ({ids}); give a single-token string")
    if rule.search == "answer":
        hits = [prompt_len + i for i, t in enumerate(answer_ids) if t == ids[0]]
    else:
        hits = [int(p) for p in valid if int(batch.input_ids[row, p]) == ids[0]]
    if not hits:
        raise LookupError(f"{rule.token!r} not found in the {rule.search} of row {row}")
    position = hits[0] - 1 if rule.kind == "predicting" else hits[0]
    return acts[position]


def extract(model: HookedMLLM, dataset: Iterable[Any], hook: str, token: TokenRule | str = "last", *,
            batch_size: int = 8, out: str | os.PathLike[str] | None = None, max_new_tokens: int = 12,
            shard_size: int = 256, progress: bool = True, skip_missing: bool = True,
            predict: bool = True) -> Features:
    """Extract one representation per sample at ``hook`` and (optionally) stream it to ``out``.

    Args:
        hook: A canonical hook name on the LM sequence (e.g. ``"blocks.3.hook_resid_post"``).
        token: A :class:`TokenRule` or its kind.
        out: A directory for shards and ``manifest.json``; an existing run there is resumed
            (same model, hook and rule, else an error).
        max_new_tokens: Greedy answer length when the rule needs the answer.
        skip_missing: Samples whose token is not found are recorded as skipped (else raise).
        predict: Record each sample's greedy answer in the manifest (always done when the
            rule needs the answer).

    Returns:
        The :class:`Features` (loaded from ``out`` when given).
    """
    rule = TokenRule(token) if isinstance(token, str) else token
    point = model.hook_points.resolve(hook)
    if not point.sequence:
        raise ValueError(f"{hook} is not on the LM sequence; extract from blocks.* / hook_embed / ln_final")
    tokenizer = model.processor.tokenizer
    meta = {"model": model.cfg.to_dict(), "hook": point.name, "rule": asdict(rule)}
    path = Path(out) if out is not None else None
    manifest = _load_manifest(path, meta) if path is not None else dict(meta, shards=[], skipped=[])
    done = {i for shard in manifest["shards"] for i in shard["ids"]} | {s["id"] for s in manifest["skipped"]}
    pending: dict[str, list] = {"ids": [], "features": [], "predictions": []}
    memory: list[dict] = []

    def flush() -> None:
        if not pending["ids"]:
            return
        feats = torch.stack(pending["features"])
        if path is not None:
            name = f"shard_{len(manifest['shards']):05d}.safetensors"
            _write_atomic(path / name, lambda tmp: save_file({"features": feats.contiguous()}, tmp))
            manifest["shards"].append({"file": name, "ids": list(pending["ids"]),
                                       "predictions": list(pending["predictions"])})
            _write_atomic(path / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
        else:
            memory.append({"features": feats, "ids": list(pending["ids"]), "predictions": list(pending["predictions"])})
        for key in pending:
            pending[key] = []

    todo = [s for s in _samples(dataset) if s.id not in done]
    bar = tqdm(total=len(todo), desc=f"extract {point.name}", unit="sample", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = model.prepare(images=[s.image for s in chunk], prompts=[s.prompt for s in chunk])
        answers: list[list[int]] = [[] for _ in chunk]
        texts = [""] * len(chunk)
        run = batch
        if rule.needs_answer or predict:
            gen = model.generate(batch, max_new_tokens=max_new_tokens)
            texts = gen.text or texts
            eos = tokenizer.eos_token_id
            for row, ids in enumerate(gen.new_tokens.tolist()):
                answers[row] = ids[: ids.index(eos)] if eos in ids else ids
            if rule.needs_answer:
                run = model.to_batch(input_ids=gen.sequences, pixel_values=batch.inputs.get("pixel_values"),
                                     attention_mask=torch.cat([batch.attention_mask,
                                                               torch.ones_like(gen.new_tokens)], dim=1),
                                     **{k: v for k, v in batch.inputs.items()
                                        if k not in ("input_ids", "attention_mask", "pixel_values")})
        _, cache = model.run_with_cache(run, names_filter=point.name)
        acts = cache[point.name]
        for row, sample in enumerate(chunk):
            try:
                feature = _select(rule, acts[row], run, row, batch.shape[1], answers[row], tokenizer)
            except LookupError as error:
                if not skip_missing:
                    raise
                manifest["skipped"].append({"id": sample.id, "reason": str(error), "prediction": texts[row]})
                continue
            pending["ids"].append(sample.id)
            pending["features"].append(feature.float().cpu())
            pending["predictions"].append(texts[row].strip())
        if len(pending["ids"]) >= shard_size:
            flush()
        bar.update(len(chunk))
    flush()
    bar.close()
    return Features.load(path) if path is not None else Features.from_parts(memory, manifest)


def _load_manifest(path: Path, meta: dict) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    file = path / "manifest.json"
    if not file.exists():
        return dict(meta, shards=[], skipped=[])
    manifest = json.loads(file.read_text())
    for key in ("hook", "rule"):
        if manifest.get(key) != meta[key]:
            raise ValueError(f"{path} holds features with {key}={manifest.get(key)!r}, not {meta[key]!r}; "
                             "use another out= directory")
    if manifest["model"].get("model_class") != meta["model"]["model_class"]:
        raise ValueError(f"{path} holds features of another model ({manifest['model'].get('model_class')})")
    # A shard file written after the manifest's last update is not counted: rewritten on resume.
    return manifest


@dataclass
class Features:
    """Extracted features: ``features`` ``[n, d]`` (or ``[n, k, d]``), ``ids``, ``predictions``."""

    features: Tensor
    ids: list[str]
    predictions: list[str]
    manifest: dict

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> Features:
        """Load every shard listed in ``path/manifest.json`` (memory-mapped by safetensors)."""
        root = Path(path)  # type: ignore[arg-type]
        manifest = json.loads((root / "manifest.json").read_text())
        parts = [{"features": load_file(str(root / s["file"]))["features"], "ids": s["ids"],
                  "predictions": s["predictions"]} for s in manifest["shards"]]
        return cls.from_parts(parts, manifest)

    @classmethod
    def from_parts(cls, parts: list[dict], manifest: dict) -> Features:
        feats = torch.cat([p["features"] for p in parts]) if parts else torch.empty(0)
        return cls(feats, [i for p in parts for i in p["ids"]], [t for p in parts for t in p["predictions"]], manifest)

    def __len__(self) -> int:
        return len(self.ids)
