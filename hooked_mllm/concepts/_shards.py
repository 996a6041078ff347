"""Writing a feature store: a shard writer that turns feature rows into checksummed shards and a manifest.

:class:`ShardWriter` takes one feature row per sample and hook point (:meth:`~ShardWriter.add`)
or a skipped sample (:meth:`~ShardWriter.skip`), and on :meth:`~ShardWriter.flush` writes the
pending rows as one checksummed safetensors shard (atomically) and saves the manifest.
:func:`hooked_mllm.concepts.extract.extract` drives it; without a folder it keeps the shards in
memory.

Used by :mod:`hooked_mllm.concepts.extract`; the on-disk primitives come from
:mod:`hooked_mllm.concepts._store`.

Example:
    >>> writer = ShardWriter(["blocks.1.hook_resid_post"], path=None, manifest={"shards": [], "skipped": []},
    ...                      shard_size=2)
    >>> writer.add(0, "a", "key-a", "", {"blocks.1.hook_resid_post": torch.zeros(4)})
    >>> writer.flush(); writer.manifest["shards"][0]["ids"]
    ['a']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor

from ._store import sha256_file, write_atomic, write_text_atomic

MANIFEST = "manifest.json"


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

    Example:
        >>> writer = ShardWriter(["h"], path=None, manifest={"shards": [], "skipped": []}, shard_size=8)
        >>> writer.skip(3, "s3", "key", "'dog' not found", "a cat")
        >>> writer.manifest["skipped"][0]["id"]
        's3'
    """

    def __init__(self, hooks: list[str], *, path: Path | None, manifest: dict, shard_size: int,
                 part: tuple[int, int] | None = None) -> None:
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

    def add(self, index: int, sample_id: str, key: str, prediction: str,
            rows: dict[str, Float[Tensor, "*d"]]) -> None:
        """Queue one sample: its dataset position, id, fingerprint, answer and one row per hook point."""
        for name in self.hooks:
            self.rows[name].append(rows[name])
        self.indices.append(index)
        self.ids.append(sample_id)
        self.keys.append(key)
        self.predictions.append(prediction)

    def skip(self, index: int, sample_id: str, key: str, reason: str, prediction: str) -> None:
        """Record a sample whose representation was not found (it has no row)."""
        record = {"id": sample_id, "key": key, "reason": reason, "prediction": prediction}
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
            raise ValueError(f"Samples of one shard have features of different shapes ({error}); image_each "
                             "needs the same number of image tokens for every sample") from None
        record: dict[str, Any] = {"ids": list(self.ids), "keys": list(self.keys),
                                  "predictions": list(self.predictions), "rows": len(self.ids)}
        if self.part is not None:
            record["index"] = list(self.indices)
        if self.path is None:
            self.memory.append(dict(record, arrays=arrays))
        else:
            stem = "shard_" if self.part is None else part_name(*self.part) + "-"
            self.manifest["shards"].append(write_shard(self.path, f"{stem}{len(self.manifest['shards']):05d}",
                                                       arrays, record))
            self.save()
        self._clear()

    def save(self) -> None:
        """Save the manifest (a no-op in memory)."""
        if self.path is not None:
            save_manifest(self.manifest_file, self.manifest)


def write_shard(path: Path, stem: str, arrays: dict[str, Tensor], record: dict) -> dict:
    """Write ``arrays`` to ``path/stem.safetensors`` atomically; return ``record`` with file, SHA-256 and size."""
    name = f"{stem}.safetensors"
    write_atomic(path / name, lambda tmp: save_file(arrays, tmp))
    return dict(record, file=name, sha256=sha256_file(path / name), bytes=(path / name).stat().st_size)
