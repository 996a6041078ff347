"""``hooked-mllm extract | concepts | shift | steer``: the concept pipeline from a shell.

Each writes outputs a user can load back in Python: feature folders (:class:`Features`),
``.npz`` files of concepts and activations, JSON reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def _model(spec: str) -> Any:
    from ..model import HookedMLLM

    if spec.startswith("toy:"):
        from .. import toy

        return toy.load(spec[4:])
    return HookedMLLM.from_pretrained(spec)


def _dataset(args: argparse.Namespace) -> Any:
    from .extract import folder_dataset, toy_dataset

    if args.images:
        return folder_dataset(args.images, args.prompt or "describe the image .")
    return toy_dataset(args.n, seed=args.seed, prompt=args.prompt, qtype=args.qtype)


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import TokenRule, extract

    rule = TokenRule(args.rule, token=args.token, position=args.position)
    feats = extract(_model(args.model), _dataset(args), args.hook, rule, batch_size=args.batch_size, out=args.out)
    print(f"{len(feats)} samples -> {args.out} (features {tuple(feats.features.shape)})")
    return 0


def _cmd_concepts(args: argparse.Namespace) -> int:
    from .decompose import make_decomposer
    from .extract import Features
    from .grounding import text_grounding

    feats = Features.load(args.features)
    dec = make_decomposer(args.method, n_components=args.k, random_state=args.seed)
    v = dec.fit_transform(feats.features.numpy())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, components=dec.components_, activations=v, ids=np.array(feats.ids))
    if args.model:
        for k, words in enumerate(text_grounding(_model(args.model), dec.components_)):
            print(f"concept {k:2d}: {' '.join(words)}")
    print(f"{args.method} with {args.k} concepts -> {out}")
    return 0


def _cmd_shift(args: argparse.Namespace) -> int:
    from .decompose import make_decomposer
    from .extract import Features
    from .shift import analyze_shift

    a, b = Features.load(args.original), Features.load(args.finetuned)
    common = [i for i in a.ids if i in set(b.ids)]
    ia, ib = [a.ids.index(i) for i in common], [b.ids.index(i) for i in common]
    dec_a = make_decomposer(args.method, n_components=args.k, random_state=args.seed)
    dec_b = make_decomposer(args.method, n_components=args.k, random_state=args.seed)
    result = analyze_shift(a.features[ia].numpy(), b.features[ib].numpy(), dec_a, dec_b, alpha=args.alpha)
    improvement = result.improvement
    report = {"samples": len(common), "mean_consistency": result.mean_consistency,
              "counts": result.counts.tolist(),
              "mean_distance_gain": improvement.mean_distance_gain if improvement else None,
              "mean_cosine_gain": improvement.mean_cosine_gain if improvement else None}
    np.savez(Path(args.out).with_suffix(".npz"), shift_vectors=result.shift_vectors, shifted=result.shifted,
             concepts_a=result.concepts_a, concepts_b=result.concepts_b)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str)[:2000])
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    import torch

    from .extract import Features
    from .steering import split_by

    feats = Features.load(args.features)
    labels = [p.split(" ")[0] if p else "" for p in feats.predictions]
    vector = split_by(feats.features, labels, args.target, args.source)
    torch.save(vector, args.out)
    print(f"steering vector {args.source!r} -> {args.target!r} (norm {float(vector.norm()):.3f}) -> {args.out}")
    return 0


def add_subparsers(sub: Any) -> None:
    """Mount ``extract``, ``concepts``, ``shift`` and ``steer`` on the package CLI."""
    ex = sub.add_parser("extract", help="extract one feature per sample to a resumable folder")
    ex.add_argument("--model", default="toy:toy-llava", help="a checkpoint path, or toy:<name>")
    ex.add_argument("--hook", required=True, help="e.g. blocks.3.hook_resid_post")
    ex.add_argument("--rule", default="last", help="last, position, image_mean, image_each, token, predicting, answer_mean")
    ex.add_argument("--token", default=None)
    ex.add_argument("--position", type=int, default=None)
    ex.add_argument("--images", default=None, help="a folder of images (default: toy scenes)")
    ex.add_argument("--prompt", default=None)
    ex.add_argument("--qtype", default=None, help="toy question type instead of the caption prompt")
    ex.add_argument("--n", type=int, default=200)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--batch-size", type=int, default=16)
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_cmd_extract)
    co = sub.add_parser("concepts", help="learn a concept dictionary from extracted features")
    co.add_argument("--features", required=True)
    co.add_argument("--method", default="seminmf")
    co.add_argument("--k", type=int, default=20)
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--model", default=None, help="ground the concepts in words with this model")
    co.add_argument("--out", required=True, help="an .npz with components, activations, ids")
    co.set_defaults(func=_cmd_concepts)
    sh = sub.add_parser("shift", help="concept shift between an original and a fine-tuned model's features")
    sh.add_argument("--original", required=True)
    sh.add_argument("--finetuned", required=True)
    sh.add_argument("--method", default="kmeans")
    sh.add_argument("--k", type=int, default=10)
    sh.add_argument("--alpha", type=float, default=1.0)
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", required=True, help="a JSON report (arrays go to the .npz beside it)")
    sh.set_defaults(func=_cmd_shift)
    st = sub.add_parser("steer", help="a mean-difference steering vector between two answers")
    st.add_argument("--features", required=True)
    st.add_argument("--source", required=True)
    st.add_argument("--target", required=True)
    st.add_argument("--out", required=True, help="a .pt file holding the vector")
    st.set_defaults(func=_cmd_steer)
