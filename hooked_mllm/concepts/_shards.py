"""Writing a feature store: a shard writer, per-rank parts, and the merge that turns parts into shards.

:class:`ShardWriter` takes one feature row per sample and hook point (:meth:`~ShardWriter.add`)
or a skipped sample (:meth:`~ShardWriter.skip`), and on :meth:`~ShardWriter.flush` writes the
pending rows as one checksummed safetensors shard (atomically) and saves the manifest.
:func:`hooked_mllm.concepts.extract.extract` drives it; without a folder it keeps the shards in
memory.

Data-parallel extraction (rank ``r`` of ``n`` processes) writes *parts* instead of shards:
``part-n{n}-r{r}-NNNNN.safetensors`` files listed in the rank's own ``part-n{n}-r{r}.json``,
which also records every row's position in the dataset. :func:`merge_parts`, run under the
store's exclusive lock, sorts the rows of every part by that position, writes them as ordinary
``shard_NNNNN.safetensors`` files appended to ``manifest.json`` and deletes the parts: the store
then reads exactly as if one process had written it, sample for sample.

Used by :mod:`hooked_mllm.concepts.extract`; the on-disk primitives come from
:mod:`hooked_mllm.concepts._store`.

Examples:
    >>> writer = ShardWriter(["blocks.1.hook_resid_post"], path=None, manifest={"shards": [], "skipped": []},
    ...                      shard_size=2)
    >>> writer.add(0, "a", "key-a", "", {"blocks.1.hook_resid_post": torch.zeros(4)})
    >>> writer.flush(); writer.manifest["shards"][0]["ids"]
    ['a']
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from ._store import (
    check_identity,
    mmap_safetensors,
    read_manifest,
    sha256_file,
    verify_shard,
    write_atomic,
    write_text_atomic,
)

MANIFEST = "manifest.json"
_PART = re.compile(r"part-n(\d+)-r(\d+)\.json")


def part_name(world_size: int, rank: int) -> str:
    """The stem of rank ``rank``'s part files: ``part-n{world_size}-r{rank}``."""
    return f"part-n{world_size}-r{rank}"


def save_manifest(file: Path, manifest: dict) -> None:
    write_text_atomic(file, json.dumps(manifest, indent=1))


class ShardWriter:
    """Collects feature rows and writes them as checksummed shards, saving the manifest after each.

    Args:
        hooks: The hook points; every :meth:`add` gives one row for each.
        path: The store folder, or None to keep the shards in memory (:attr:`memory`).
        manifest: The manifest (or a rank's part manifest) to append shard records and skipped
            samples to; ``manifest["shards"]`` and ``manifest["skipped"]`` must exist.
        shard_size: Rows per shard: :attr:`full` says when the caller should :meth:`flush`.
        part: ``(world_size, rank)`` to write a rank's parts (records then carry each row's
            dataset ``index``), or None for ordinary shards.

    Examples:
        >>> writer = ShardWriter(["h"], path=None, manifest={"shards": [], "skipped": []}, shard_size=8)
        >>> writer.skip(3, "s3", "key", "'dog' not found", "a cat")
        >>> writer.manifest["skipped"][0]["id"]
        's3'
    """

    def __init__(
        self,
        hooks: list[str],
        *,
        path: Path | None,
        manifest: dict,
        shard_size: int,
        part: tuple[int, int] | None = None,
    ) -> None:
        self.hooks = list(hooks)
        self.path = path
        self.manifest = manifest
        self.shard_size = shard_size
        self.part = part
        self.memory: list[dict] = []
        self._clear()

    def _clear(self) -> None:
        self.indices: list[int] = []
        self.ids: list[str] = []
        self.keys: list[str] = []
        self.predictions: list[str] = []
        self.rows: dict[str, list[Tensor]] = {name: [] for name in self.hooks}

    @property
    def manifest_file(self) -> Path:
        assert self.path is not None
        return self.path / (MANIFEST if self.part is None else part_name(*self.part) + ".json")

    @property
    def full(self) -> bool:
        """Whether at least ``shard_size`` rows are pending."""
        return len(self.ids) >= self.shard_size

    def add(
        self, index: int, sample_id: str, key: str, prediction: str, rows: dict[str, Float[Tensor, "*d"]]
    ) -> None:
        """Queue one sample: its dataset position, id, fingerprint, answer and one row per hook point."""
        for name in self.hooks:
            self.rows[name].append(rows[name])
        self.indices.append(index)
        self.ids.append(sample_id)
        self.keys.append(key)
        self.predictions.append(prediction)

    def skip(self, index: int, sample_id: str, key: str, reason: str, prediction: str) -> None:
        """Record a sample whose representation was not found (it has no row)."""
        record: dict[str, str | int] = {
            "id": sample_id,
            "key": key,
            "reason": reason,
            "prediction": prediction,
        }
        if self.part is not None:
            record["index"] = index
        self.manifest["skipped"].append(record)

    def flush(self) -> None:
        """Write the pending rows as one shard (nothing when none are pending) and save the manifest."""
        if not self.ids:
            return
        try:
            arrays = {name: torch.stack(rows).contiguous() for name, rows in self.rows.items()}
        except RuntimeError as error:
            raise ValueError(
                f"Samples of one shard have features of different shapes ({error}); image_each "
                "needs the same number of image tokens for every sample"
            ) from None
        record: dict[str, Any] = {
            "ids": list(self.ids),
            "keys": list(self.keys),
            "predictions": list(self.predictions),
            "rows": len(self.ids),
        }
        if self.part is not None:
            record["index"] = list(self.indices)
        if self.path is None:
            self.memory.append(dict(record, arrays=arrays))
        else:
            stem = "shard_" if self.part is None else part_name(*self.part) + "-"
            self.manifest["shards"].append(
                write_shard(self.path, f"{stem}{len(self.manifest['shards']):05d}", arrays, record)
            )
            self.save()
        self._clear()

    def save(self) -> None:
        """Save the manifest (a no-op in memory)."""
        if self.path is not None:
            save_manifest(self.manifest_file, self.manifest)


def write_shard(path: Path, stem: str, arrays: dict[str, Tensor], record: dict) -> dict:
    """Write ``arrays`` to ``path/stem.safetensors`` atomically; return ``record`` with file and checksum."""
    name = f"{stem}.safetensors"
    try:
        write_atomic(path / name, lambda tmp: save_file(arrays, tmp))
    except SafetensorError as error:  # e.g. the disk is full; nothing of the shard is left behind
        raise OSError(
            f"Could not write {path / name}: {error} (the store is unchanged; free space and rerun)"
        ) from None
    return dict(record, file=name, sha256=sha256_file(path / name), bytes=(path / name).stat().st_size)


def read_parts(path: Path, identity: dict) -> dict[str, dict]:
    """Every rank's part manifest in the store (by file name), identity-checked and shard-verified."""
    parts = {}
    for file in sorted(path.glob("part-n*-r*.json")):
        if not _PART.fullmatch(file.name):
            continue
        manifest = read_manifest(file)
        check_identity(file, manifest, identity)
        for shard in manifest["shards"]:
            verify_shard(path, shard)
        parts[file.name] = manifest
    return parts


def ranks_complete(path: Path, world_size: int) -> bool:
    """Whether every rank of a ``world_size``-process run has finished its part."""
    for rank in range(world_size):
        file = path / f"{part_name(world_size, rank)}.json"
        if not file.exists() or not read_manifest(file).get("complete"):
            return False
    return True


def merge_parts(path: Path, manifest: dict, identity: dict, shard_size: int) -> int:
    """Move every rank's part rows into ordinary shards of ``manifest``, in dataset order; return their count.

    Call it holding the store's exclusive lock (no rank is writing). Rows are sorted by their
    position in the dataset (then id), written ``shard_size`` per shard after the existing
    shards, and skipped samples are appended in the same order. A sample already in the
    manifest with the same fingerprint (a merge interrupted after saving) is dropped; with
    another fingerprint, or in two parts, the merge refuses. The part files are deleted last.
    """
    parts = read_parts(path, identity)
    if not parts:
        return 0
    known = {
        i: k
        for shard in manifest["shards"]
        for i, k in zip(shard["ids"], shard.get("keys") or [None] * len(shard["ids"]))
    }
    known.update({s["id"]: s.get("key") for s in manifest["skipped"]})
    rows: list[tuple[int, str, str, str, dict, int]] = []
    skipped: list[dict] = []
    origin: dict[str, str] = {}
    for name, part in parts.items():
        for shard in part["shards"]:
            mapped = mmap_safetensors(path / shard["file"])
            for j, (index, sid, key, pred) in enumerate(
                zip(shard["index"], shard["ids"], shard["keys"], shard["predictions"])
            ):
                if _seen(sid, key, name, known, origin):
                    rows.append((index, sid, key, pred, mapped, j))
        for item in part["skipped"]:
            if _seen(item["id"], item["key"], name, known, origin):
                skipped.append(item)
    rows.sort(key=lambda r: (r[0], r[1]))
    for start in range(0, len(rows), shard_size):
        chunk = rows[start : start + shard_size]
        arrays = {
            h: torch.stack([torch.from_numpy(r[4][h][r[5]].copy()) for r in chunk]).contiguous()
            for h in manifest["hooks"]
        }
        record = {
            "ids": [r[1] for r in chunk],
            "keys": [r[2] for r in chunk],
            "predictions": [r[3] for r in chunk],
            "rows": len(chunk),
        }
        manifest["shards"].append(write_shard(path, f"shard_{len(manifest['shards']):05d}", arrays, record))
    for item in sorted(skipped, key=lambda s: (s["index"], s["id"])):
        manifest["skipped"].append({k: v for k, v in item.items() if k != "index"})
    save_manifest(path / MANIFEST, manifest)
    for name, part in parts.items():
        (path / name).unlink()
        for shard in part["shards"]:
            (path / shard["file"]).unlink(missing_ok=True)
    for stray in [*path.glob("part-n*-r*-*.safetensors"), *path.glob(".lock-part-n*-r*")]:
        stray.unlink()  # a part written after its manifest's last save; the (free) rank locks
    return len(rows)


def _seen(sample_id: str, key: str, part: str, known: dict, origin: dict) -> bool:
    """Whether a part's sample is new (True), already merged (False); refuse conflicting duplicates."""
    if sample_id in known:
        if known[sample_id] not in (None, key):
            raise ValueError(
                f"Sample {sample_id!r} of {part} is in the store with another prompt or image; "
                "features of different inputs cannot share an id. Use another out= folder."
            )
        return False
    if sample_id in origin:
        raise ValueError(
            f"Sample {sample_id!r} was extracted by two processes ({origin[sample_id]} and {part}); runs of "
            "different process counts wrote into this store at once. Delete the part-* files of one of them "
            "and run again."
        )
    origin[sample_id] = part
    return True
