"""The on-disk feature store: atomic readable writes, a folder lock, checksummed shards, a manifest
that says what makes features comparable, and memory-mapped loading.

A store folder holds ``manifest.json``, ``shard_NNNNN.safetensors`` files (one tensor per hook
point, rows = samples) and a ``.lock`` file while an extraction writes into it (data-parallel
ranks also leave ``part-*`` files there until they are merged). The manifest
records the *identity* of the features (model name or path, fingerprints of its config and
weights, hook points, token rule, chat template, library version) and, per shard, its file,
sample ids, per-sample fingerprints (prompt + image), predictions and SHA-256 checksum.
:func:`check_identity` refuses to mix features of another identity, naming every field that
differs; :func:`verify_shard` names a truncated or corrupted shard.

Used by :mod:`hooked_mllm.concepts.extract` (writing) and :class:`Features` (reading).

Examples:
    >>> feats = Features.load("features/red")            # doctest: +SKIP
    >>> feats.features.shape, feats.hooks                  # doctest: +SKIP
    (torch.Size([200, 4096]), ['blocks.31.hook_resid_post'])
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

FORMAT_VERSION = 2
IDENTITY_KEYS = ("model", "hooks", "rule", "template", "library")
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], writer: Callable[[str], Any]) -> None:
    """Write ``path`` through ``writer(tmp_path)`` then rename it into place: readers never see half a file.

    The file gets the usual permissions of a new file (``0666 & ~umask``, e.g. 0644), not
    ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_atomic` for a text file."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_manifest(file: str | os.PathLike[str]) -> dict:
    """The manifest at ``file``, checked: JSON, a mapping with ``shards`` and ``skipped`` lists, no sample
    id listed twice.

    Raises:
        ValueError: The file is damaged, naming it and what is wrong.

    Examples:
        >>> manifest = read_manifest("features/manifest.json")   # doctest: +SKIP
    """
    path = Path(file)
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is damaged (not JSON: {error}); restore it or extract into a new folder"
        ) from None
    if not isinstance(manifest, dict) or not all(
        isinstance(manifest.get(key), list) for key in ("shards", "skipped")
    ):
        raise ValueError(
            f"{path} is damaged (no shards / skipped lists); restore it or extract into a new folder"
        )
    ids: list = []
    for shard in manifest["shards"]:
        if not isinstance(shard, dict) or not isinstance(shard.get("ids"), list) or "file" not in shard:
            raise ValueError(f"{path} is damaged (a shard without file or ids); restore it or extract anew")
        ids += shard["ids"]
    for group in (ids, [s.get("id") for s in manifest["skipped"] if isinstance(s, dict)]):
        counts = collections.Counter(group)
        twice = next((sample for sample in group if counts[sample] > 1), None)
        if twice is not None:
            raise ValueError(
                f"{path} lists sample id {twice!r} twice; a store holds each sample once (restore the "
                "manifest or extract into a new folder)"
            )
    return manifest


_LEFTOVER = re.compile(r"\.(manifest\.json|(shard|part)[\w.-]*\.(safetensors|json))\.[a-z0-9_]{8}")


def remove_leftovers(path: Path) -> list[str]:
    """Delete the temporary files (``.manifest.json.XXXXXXXX``...) that :func:`write_atomic` leaves when
    a process is killed between writing and renaming; call it holding the store's exclusive lock.

    Returns:
        The names removed.
    """
    removed = sorted(p.name for p in path.iterdir() if _LEFTOVER.fullmatch(p.name) and p.is_file())
    for name in removed:
        (path / name).unlink(missing_ok=True)
    return removed


class StoreBusyError(RuntimeError):
    """Another extraction holds the store's lock."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def config_fingerprint(config: dict) -> str:
    """SHA-256 of a model config dict without bookkeeping keys (``_name_or_path``, ``transformers_version``,
    private ``_*`` entries), so the same checkpoint loaded from another folder keeps its fingerprint."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                str(k): clean(v)
                for k, v in value.items()
                if not str(k).startswith("_") and k != "transformers_version"
            }
        return value

    return sha256_json(clean(config))


def _tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """SHA-256 of a tensor's name, shape, dtype and every byte of its values."""
    digest = hashlib.sha256(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    if tensor.is_meta:  # no values to read (a model built without weights)
        return digest.digest()
    flat = tensor.detach().reshape(-1)
    step = 1 << 26  # bytes per block: bounded host copies of device tensors
    raw = flat.contiguous().view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    for start in range(0, raw.numel(), step):
        block = raw[start : start + step].cpu().numpy()
        digest.update(block.data)  # hashlib releases the GIL on large buffers
    return digest.digest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """``"sha256:<hex>"`` over every parameter and buffer: its name, shape, dtype and every byte.

    Editing any single value (one MLP weight, the last embedding row) changes it. Tensors are hashed
    in parallel threads (hashlib releases the GIL), about 1 GB/s per core; ``benchmarks/fingerprint.py``
    measures it on a model's worth of bytes. Tied tensors (one storage under two names) are read once.

    Examples:
        >>> weights_fingerprint(model.hf_model)[:7]   # doctest: +SKIP
        'sha256:'
    """
    from concurrent.futures import ThreadPoolExecutor

    with torch.no_grad():
        state = module.state_dict(keep_vars=False)
        seen: dict[tuple, str] = {}
        jobs: list[tuple[str, torch.Tensor | None, str | None]] = []
        for name, tensor in state.items():
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if not tensor.is_meta and tensor.data_ptr() and key in seen:
                jobs.append((name, None, seen[key]))  # the same values as an earlier name
            else:
                seen[key] = name
                jobs.append((name, tensor, None))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(
                pool.map(
                    lambda job: (
                        _tensor_digest(job[0], job[1])
                        if job[1] is not None
                        else f"{job[0]}=={job[2]}".encode()
                    ),
                    jobs,
                )
            )
    total = hashlib.sha256()
    for digest in digests:
        total.update(digest)
    return "sha256:" + total.hexdigest()


def _short(value: object) -> str:
    return (repr(value)[:80] + "...") if len(repr(value)) > 80 else repr(value)


def describe_difference(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    """The fields (dotted names) whose values differ between two identity dicts, with both values."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_difference(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: stored {_short(a)}, now {_short(b)}")
    return out


def check_identity(path: Path, manifest: dict, identity: dict) -> None:
    """Refuse to add features of another identity to the store at ``path``."""
    stored = {key: manifest.get(key) for key in IDENTITY_KEYS}
    differences = describe_difference(stored, identity)
    if differences:
        raise ValueError(
            f"{path} holds features that are not comparable with this run; what differs:\n  "
            + "\n  ".join(differences)
            + "\nUse another out= folder (or delete this one to start over)."
        )


@contextlib.contextmanager
def folder_lock(
    path: Path, *, name: str = ".lock", shared: bool = False, wait: bool = False
) -> Iterator[None]:
    """Hold a lock on ``path/name`` for the block; by default exclusive, and a second holder fails at once.

    The lock is an ``fcntl.flock``: the system releases it if the process dies, so a crashed
    run never leaves a stale lock behind. ``shared=True`` takes a shared lock, which the ranks
    of one data-parallel extraction hold together (an exclusive writer is then refused, and
    refuses them); ``wait=True`` blocks until the lock is free instead of failing.
    """
    lock_file = path / name
    handle = open(lock_file, "a+")
    try:
        try:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
            fcntl.flock(handle.fileno(), flags)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreBusyError(
                f"{path} is being written by another extraction ({holder}); wait for it to finish or use "
                "another out= folder. Two runs into one folder would lose and mislabel samples."
            ) from None
        if not shared:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
            handle.flush()
        yield
    finally:
        handle.close()


def verify_shard(root: Path, shard: dict) -> None:
    """Raise a ValueError naming ``shard['file']`` if it is missing, truncated or its checksum differs."""
    file = root / shard["file"]
    if not file.exists():
        raise ValueError(f"Shard {file} listed in the manifest is missing; the store is incomplete.")
    expected = shard.get("sha256")
    if expected is None:
        return
    if "bytes" in shard and file.stat().st_size != shard["bytes"]:
        raise ValueError(
            f"Shard {file} is truncated or extended: {file.stat().st_size} bytes, the manifest "
            f"records {shard['bytes']}. Delete that shard's entry or re-extract into a new folder."
        )
    actual = sha256_file(file)
    if actual != expected:
        raise ValueError(
            f"Shard {file} is corrupted: SHA-256 {actual[:16]}..., the manifest records "
            f"{expected[:16]}.... Re-extract into a new folder."
        )


def mmap_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a copy-on-write numpy array (no read up front)."""
    with open(file, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(
                f"{file}: tensor {name} has dtype {info['dtype']}, which cannot be memory-mapped"
            )
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:
            out[name] = np.zeros(shape, dtype)
            continue
        out[name] = np.memmap(file, dtype=dtype, mode="c", offset=8 + header_len + start, shape=shape)
    return out


@dataclass
class Features:
    """Extracted features, memory-mapped from their shards.

    Attributes:
        ids: sample ids, in store order.
        predictions: each sample's generated answer ("" when none was generated).
        manifest: the store's manifest (identity, shards, skipped samples).
        hooks: hook points held (one tensor per hook and sample).

    ``features`` is the ``[n, d]`` (or ``[n, k, d]`` for ``image_each``) tensor of the only
    hook point (``feats[hook]`` picks one when there are several); it is built from
    memory-mapped shards on first use. :meth:`iter_rows` streams row blocks without
    building it (for fits that do not hold the whole matrix).

    Examples:
        >>> feats = Features.load("features/red")          # doctest: +SKIP
        >>> feats["blocks.3.hook_resid_post"].features.shape   # doctest: +SKIP
        torch.Size([200, 128])
    """

    parts: list[dict[str, Any]]
    ids: list[str]
    predictions: list[str]
    manifest: dict
    hooks: list[str] = field(default_factory=list)
    _cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Features:
        """Open the store at ``path``; ``verify`` checks every shard's size and SHA-256 first."""
        root = Path(path)
        file = root / "manifest.json"
        if not file.exists():
            raise FileNotFoundError(
                f"No feature store at {root} (no manifest.json); run extract(..., out=) first"
            )
        manifest = read_manifest(file)
        parts = []
        for shard in manifest["shards"]:
            if verify:
                verify_shard(root, shard)
            parts.append(
                {
                    "arrays": mmap_safetensors(root / shard["file"]),
                    "ids": shard["ids"],
                    "predictions": shard["predictions"],
                }
            )
        return cls.from_parts(parts, manifest)

    @classmethod
    def from_parts(cls, parts: list[dict], manifest: dict) -> Features:
        hooks = list(manifest.get("hooks") or [])
        return cls(
            parts,
            [i for p in parts for i in p["ids"]],
            [t for p in parts for t in p["predictions"]],
            manifest,
            hooks,
        )

    def _hook(self, hook: str | None) -> str:
        if hook is None:
            if len(self.hooks) != 1:
                raise ValueError(
                    f"This store holds {len(self.hooks)} hook points ({', '.join(self.hooks)}); "
                    "pick one with feats[hook] or feats.tensor(hook)"
                )
            return self.hooks[0]
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} is not in this store; it holds {', '.join(self.hooks)}")
        return hook

    def tensor(self, hook: str | None = None) -> Float[Tensor, "n *d"]:  # noqa: F821 (jaxtyping shape string)
        """All rows at ``hook`` (default: the only hook) as one float tensor (built once, then kept)."""
        hook = self._hook(hook)
        if hook not in self._cache:
            blocks = [
                torch.from_numpy(p["arrays"][hook])
                if isinstance(p["arrays"][hook], np.ndarray)
                else p["arrays"][hook]
                for p in self.parts
            ]
            if not blocks:
                self._cache[hook] = torch.empty(0)
            else:
                self._cache[hook] = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
        return self._cache[hook]

    @property
    def features(self) -> Float[Tensor, "n *d"]:  # noqa: F821 (jaxtyping shape string)
        return self.tensor()

    def __getitem__(self, hook: str) -> Features:
        """The same samples at one hook point."""
        hook = self._hook(hook)
        return Features(self.parts, self.ids, self.predictions, self.manifest, [hook])

    def iter_rows(self, block: int = 8192, hook: str | None = None) -> Iterator[Float[np.ndarray, "m d"]]:
        """Yield consecutive row blocks (numpy, at most ``block`` rows) read from the memory-mapped shards."""
        hook = self._hook(hook)
        for part in self.parts:
            array = part["arrays"][hook]
            array = array.numpy() if isinstance(array, Tensor) else array
            for start in range(0, len(array), block):
                yield np.asarray(array[start : start + block])

    def __len__(self) -> int:
        return len(self.ids)
