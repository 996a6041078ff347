"""Datasets for feature extraction, read lazily: samples hold image *paths* until their batch runs.

A dataset is any iterable of :class:`Sample` (or ``(image, prompt)`` / ``(id, image, prompt)``
tuples). ``image`` may be a PIL image, a path (opened when its batch is prepared) or anything
the model's processor accepts. Builders: :func:`folder_dataset` (every image of a folder, one
prompt), :func:`jsonl_dataset` (one JSON object per line with an image path and a prompt),
:func:`hf_dataset` (rows of a Hugging Face ``datasets`` dataset, or any iterable of mappings,
with image and prompt columns) and :func:`toy_dataset` (scenes of the toy world).
:func:`sample_fingerprint` identifies a sample's prompt and image, so a feature store can
refuse to mix features of the same id extracted from another prompt or image.

Examples:
    >>> data = jsonl_dataset("coco_val.jsonl")            # doctest: +SKIP
    >>> feats = extract(model, data, "blocks.31.hook_resid_post", out="features/coco")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One dataset record: an id, an image (PIL image or path) and a prompt."""

    id: str
    image: Any
    prompt: str


def iter_samples(dataset: Iterable[Any]) -> Iterator[Sample]:
    """Normalise a dataset's items to :class:`Sample` lazily."""
    for i, item in enumerate(dataset):
        if isinstance(item, Sample):
            yield item
        elif isinstance(item, tuple) and len(item) == 2:
            yield Sample(str(i), item[0], item[1])
        elif isinstance(item, tuple) and len(item) == 3:
            yield Sample(str(item[0]), item[1], item[2])
        else:
            raise TypeError(
                f"Dataset item {i} is a {type(item).__name__}; give Sample, (image, prompt) or "
                "(id, image, prompt)"
            )


def load_image(image: Any) -> Any:
    """Open ``image`` if it is a path (as RGB); return anything else unchanged."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as handle:
            return handle.convert("RGB")
    return image


def sample_fingerprint(sample: Sample) -> str:
    """A short hash of the sample's prompt and image (a path by its name, size and mtime; pixels by value)."""
    digest = hashlib.sha256(sample.prompt.encode())
    image = sample.image
    if isinstance(image, (str, os.PathLike)):
        stat = os.stat(image)
        digest.update(f"path:{os.path.abspath(image)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif hasattr(image, "tobytes") and hasattr(image, "size") and hasattr(image, "mode"):
        digest.update(f"pil:{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    elif isinstance(image, torch.Tensor):
        digest.update(image.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(image, np.ndarray):
        digest.update(np.ascontiguousarray(image).tobytes())
    elif isinstance(image, (list, tuple)):
        for part in image:
            digest.update(sample_fingerprint(Sample("", part, "")).encode())
    elif image is not None:
        digest.update(repr(image).encode())
    return digest.hexdigest()[:24]


def folder_dataset(
    folder: str | os.PathLike[str], prompt: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> list[Sample]:
    """Every image in ``folder`` (sorted by name) with the same ``prompt``; images are opened per batch.

    Examples:
        >>> data = folder_dataset("val2017", "Describe the image.")     # doctest: +SKIP
        >>> data[0].id, data[0].image                                     # doctest: +SKIP
        ('000000000139.jpg', PosixPath('val2017/000000000139.jpg'))
    """
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)
    if not paths:
        raise ValueError(f"No images ({', '.join(suffixes)}) in {folder}")
    return [Sample(p.name, p, prompt) for p in paths]


def jsonl_dataset(
    file: str | os.PathLike[str],
    *,
    image_key: str = "image",
    prompt_key: str = "prompt",
    id_key: str = "id",
    prompt: str | None = None,
) -> Iterator[Sample]:
    """Samples from a JSON-lines file, one ``{"id": ..., "image": path, "prompt": ...}`` per line, read
    lazily.

    Relative image paths are taken from the file's folder. ``prompt`` fills in a missing
    prompt; a missing id becomes the line number.

    Examples:
        >>> next(jsonl_dataset("data.jsonl")).prompt      # doctest: +SKIP
        'What is in the image?'
    """
    file = Path(file)
    with open(file) as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file}:{number + 1} is not JSON ({error})") from None
            text = record.get(prompt_key, prompt)
            if image_key not in record or text is None:
                raise ValueError(f"{file}:{number + 1} needs {image_key!r} and {prompt_key!r} (or prompt=)")
            path = Path(record[image_key])
            yield Sample(
                str(record.get(id_key, number)), path if path.is_absolute() else file.parent / path, text
            )


def hf_dataset(
    rows: Iterable[Mapping[str, Any]],
    *,
    image_column: str = "image",
    prompt_column: str | None = "prompt",
    id_column: str | None = None,
    prompt: str | None = None,
) -> Iterator[Sample]:
    """Samples from a Hugging Face ``datasets`` dataset (or any iterable of mappings), row by row.

    ``datasets`` decodes each row's image when the row is read, so nothing is decoded up front.
    ``prompt`` replaces a prompt column; without ``id_column`` the row index is the id.

    Examples:
        >>> ds = datasets.load_dataset(
        ...     "HuggingFaceM4/VQAv2", split="validation", streaming=True
        ... )  # doctest: +SKIP
        >>> data = hf_dataset(ds, image_column="image", prompt_column="question",
        ...                   id_column="question_id")  # doctest: +SKIP
    """
    if prompt is None and prompt_column is None:
        raise ValueError(
            "hf_dataset needs prompt_column= (the column of each row's prompt) or prompt= (one for all)."
        )
    for index, row in enumerate(rows):
        missing = [
            c
            for c in (image_column, id_column, None if prompt is not None else prompt_column)
            if c is not None and c not in row
        ]
        if missing:
            raise KeyError(f"Row {index} has no column {missing[0]!r}; its columns are {sorted(row)}")
        text = prompt if prompt is not None else row[cast(str, prompt_column)]
        yield Sample(str(row[id_column]) if id_column else str(index), row[image_column], text)


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
