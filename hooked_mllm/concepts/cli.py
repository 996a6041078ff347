"""``hooked-mllm extract | concepts | shift | steer``: the concept pipeline from a shell.

Each writes outputs a user can load back in Python: feature folders (:class:`Features`),
``.npz`` files of concepts and activations, JSON reports.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Names of :data:`hooked_mllm.concepts.decompose.DECOMPOSERS` and of the token rules, listed here so that
#: building the parser imports no scikit-learn or torch (a test keeps them equal).
METHODS = ("seminmf", "sparse", "dictlearn", "kmeans", "pca", "nmf", "ica", "topnorm")
RULES = ("last", "position", "image_mean", "image_each", "token", "predicting", "answer_mean", "range")
DTYPES = ("float32", "float16", "bfloat16", "auto")


def _model(spec: str, dtype: str | None = None, device: str | None = None) -> Any:
    from .._cli_common import load_model

    return load_model(spec, dtype, device)


def _dataset(args: argparse.Namespace) -> Any:
    from .data import folder_dataset, hf_dataset, jsonl_dataset, toy_dataset

    if args.images:
        return folder_dataset(args.images, args.prompt or "describe the image .")
    if args.jsonl:
        return jsonl_dataset(args.jsonl, prompt=args.prompt)
    if args.hf_dataset:
        try:
            import datasets
        except ImportError:
            raise SystemExit("--hf-dataset needs the `datasets` package (pip install datasets)") from None

        name, _, split = args.hf_dataset.partition(":")
        rows = datasets.load_dataset(name, split=split or "train", streaming=True)
        return hf_dataset(
            rows,
            image_column=args.image_column,
            prompt_column=args.prompt_column,
            id_column=args.id_column,
            prompt=args.prompt,
        )
    return toy_dataset(args.n, seed=args.seed, prompt=args.prompt, qtype=args.qtype)


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import TokenRule, extract

    words = (
        tuple(w.strip() for w in args.token.split(",")) if args.token and "," in args.token else args.token
    )
    rule = TokenRule(
        args.rule,
        token=words,
        position=args.position,
        search=args.search,
        reduce=args.reduce,
        start=args.start,
        end=args.end,
    )
    hooks = [h.strip() for h in args.hook.split(",") if h.strip()]
    if (args.rank is None) != (args.ranks is None):
        raise ValueError("Give --rank and --ranks together (this process's rank and the number of processes)")
    group = args.ranks is None and _init_torchrun()
    try:
        device = args.device
        if group and device == "cuda":  # one GPU per process under torchrun
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        model = _model(args.model, args.dtype, device)
        feats = extract(
            model,
            _dataset(args),
            hooks,
            rule,
            batch_size=args.batch_size,
            out=args.out,
            max_new_tokens=args.max_new_tokens,
            shard_size=args.shard_size,
            predict=args.predict,
            progress=not group or int(os.environ.get("RANK", "0")) == 0,
            rank=args.rank,
            world_size=args.ranks,
        )
        if group:  # every rank done (the merge included) before any tears the group down
            import torch.distributed as dist

            dist.barrier()
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if group and int(os.environ.get("RANK", "0")) != 0:
        return 0
    shapes = {h: tuple(feats.tensor(h).shape) for h in feats.hooks}
    print(f"{len(feats)} samples -> {args.out} (features {shapes}; {len(feats.manifest['skipped'])} skipped)")
    return 0


def _init_torchrun() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment) with gloo.

    Only small messages travel between the ranks (their outcome), so gloo serves CPU and GPU runs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def _pick(feats: Any, hook: str | None) -> Any:
    """The store at one hook point (``--hook``), or the store itself if it holds one."""
    if hook:
        return feats[hook]
    if len(feats.hooks) > 1:
        raise SystemExit(
            f"The store holds {len(feats.hooks)} hook points ({', '.join(feats.hooks)}); pick one with --hook"
        )
    return feats


def _decomposer(args: argparse.Namespace) -> Any:
    from .decompose import DECOMPOSERS, make_decomposer

    params: dict[str, Any] = {"n_components": args.k}
    accepted = DECOMPOSERS[args.method]().get_params() if args.method in DECOMPOSERS else {}
    if "random_state" in accepted:
        params["random_state"] = args.seed
    for name, attr in (
        ("alpha", "dec_alpha"),
        ("max_iter", "max_iter"),
        ("batch_size", "dec_batch_size"),
        ("device", "device"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            if name not in accepted:
                raise SystemExit(
                    f"{name} does not apply to --method {args.method} (its settings: "
                    f"{', '.join(sorted(accepted))})"
                )
            params[name] = value
    return make_decomposer(args.method, **params)


def _save_npz(path: Path, **arrays: Any) -> None:
    from ._store import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(handle, **arrays)

    write_atomic(path, write)


def _cmd_concepts(args: argparse.Namespace) -> int:
    from .._cli_common import check_device
    from .extract import Features
    from .grounding import text_grounding

    check_device(args.device)
    feats = _pick(Features.load(args.features), args.hook)
    dec = _decomposer(args)
    v = dec.fit_transform(feats.features.numpy())
    out = Path(args.out)
    _save_npz(out, components=dec.components_, activations=v, ids=np.array(feats.ids))
    if args.model:
        for k, words in enumerate(text_grounding(_model(args.model), dec.components_)):
            print(f"concept {k:2d}: {' '.join(words)}")
    print(f"{args.method} with {args.k} concepts -> {out}")
    return 0


def _cmd_shift(args: argparse.Namespace) -> int:
    from ._store import write_text_atomic
    from .extract import Features
    from .shift import align_ids, analyze_shift

    a, b = _pick(Features.load(args.original), args.hook), _pick(Features.load(args.finetuned), args.hook)
    ia, ib = align_ids(a.ids, b.ids)
    if len(ia) == 0:
        raise SystemExit(f"{args.original} and {args.finetuned} share no sample ids")
    dec_a, dec_b = _decomposer(args), _decomposer(args)
    result = analyze_shift(
        a.features[ia].numpy(),
        b.features[ib].numpy(),
        dec_a,
        dec_b,
        alpha=args.alpha,
        reduce=args.reduce,
        match_on=args.match_on,
        baselines=True,
        random_state=args.seed,
    )
    report = dict(samples=len(ia), **result.summary())
    out = Path(args.out)
    json_path, npz_path = out.with_suffix(".json"), out.with_suffix(".npz")
    _save_npz(
        npz_path,
        shift_vectors=result.shift_vectors,
        shifted=result.shifted,
        concepts_a=result.concepts_a,
        concepts_b=result.concepts_b,
        assignment=result.assignment,
        ids=np.array([a.ids[i] for i in ia]),
    )
    write_text_atomic(json_path, json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str)[:3000])
    print(f"report -> {json_path}, arrays -> {npz_path}")
    return 0


def _eval_rows(file: str) -> list[tuple]:
    """``(image, prompt, answers, answer_type)`` rows of a JSONL with image, prompt, answer(s),
    answer_type.
    """
    from .data import load_image

    rows = []
    root = Path(file).parent
    for number, line in enumerate(Path(file).read_text().splitlines()):
        if not line.strip():
            continue
        record = json.loads(line)
        answers = record.get("answers", record.get("answer"))
        if "image" not in record or "prompt" not in record or answers is None:
            raise SystemExit(f"{file}:{number + 1} needs image, prompt and answer (or answers)")
        image = Path(record["image"])
        rows.append(
            (
                load_image(image if image.is_absolute() else root / image),
                record["prompt"],
                answers,
                record.get("answer_type", "other"),
            )
        )
    return rows


def load_vector(file: str | os.PathLike[str]) -> Any:
    """The steering vector in ``file``: one 1-D floating tensor, saved by ``steer --out`` (``torch.save``)
    or in a safetensors file (one tensor). Never unpickles code: ``torch.load(weights_only=True)``.

    Raises:
        ValueError: The file is missing, is not such a file, or holds something else than one 1-D
            finite floating tensor.

    Examples:
        >>> vector = load_vector("red_to_blue.pt")   # doctest: +SKIP
    """
    import pickle
    import warnings

    import torch

    path = Path(file)
    if not path.is_file():
        raise ValueError(f"--vector {file}: no such file")
    want = "a file holding one 1-D tensor (written by `steer --out`, or a .safetensors file)"
    try:
        if path.read_bytes()[8:9] == b"{":  # safetensors: an 8-byte header length, then JSON
            from safetensors.torch import load_file

            tensors = load_file(path)
            vector: Any = next(iter(tensors.values())) if len(tensors) == 1 else tensors
        else:
            with warnings.catch_warnings():  # a plain pickle is refused below, whatever its protocol
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                vector = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--vector {file} is not {want} ({first})") from error
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"--vector {file} holds a {type(vector).__name__}, not {want}")
    if vector.ndim != 1 or not vector.is_floating_point() or not bool(torch.isfinite(vector).all()):
        raise ValueError(
            f"--vector {file} holds a {tuple(vector.shape)} {vector.dtype} tensor; give one 1-D tensor of "
            "finite floats (d_model values)"
        )
    return vector


def _cmd_steer(args: argparse.Namespace) -> int:
    import torch

    from ._store import write_atomic, write_text_atomic
    from .extract import Features
    from .steering import evaluate_steering, normalize_answer, split_by

    if args.vector:
        vector = load_vector(args.vector)
    else:
        if not (args.features and args.source):
            raise SystemExit("give --vector FILE, or --features F --source S --target T to compute one")
        feats = _pick(Features.load(args.features), args.hook)
        labels = [normalize_answer(p) for p in feats.predictions]
        if not any(labels):
            raise SystemExit(f"{args.features} has no recorded answers: extract it with --predict")
        vector = split_by(
            feats.features, labels, normalize_answer(args.target), normalize_answer(args.source)
        )
        if args.out:
            write_atomic(Path(args.out), lambda tmp: torch.save(vector, tmp))
            print(
                f"steering vector {args.source!r} -> {args.target!r} (norm {float(vector.norm()):.3f}) -> "
                f"{args.out}"
            )
    if args.evaluate:
        if args.model is None or args.layer is None:
            raise SystemExit("--evaluate needs --model and --layer")
        rows = _eval_rows(args.evaluate)
        source = normalize_answer(args.source) if args.source else None
        targeted = [
            r
            for r in rows
            if source is None
            or any(normalize_answer(a) == source for a in ([r[2]] if isinstance(r[2], str) else r[2]))
        ]
        others = [r for r in rows if r not in targeted] if source is not None else []
        model = _model(args.model, args.dtype, args.device)
        report = {}
        for alpha in args.alpha:
            r = evaluate_steering(
                model,
                targeted,
                others,
                vector,
                layer=args.layer,
                alpha=alpha,
                target=args.target,
                schedule=args.schedule,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
            )
            report[str(alpha)] = r.to_dict()
            print(
                f"alpha {alpha}: target rate {r.target_rate_before:.2f} -> {r.target_rate:.2f}, other "
                f"accuracy {r.other_accuracy_before:.2f} -> {r.other_accuracy_after:.2f}, {r.changed_other} "
                "other answers changed"
            )
        if args.report:
            write_text_atomic(Path(args.report), json.dumps(report, indent=1))
            print(f"report -> {args.report}")
    return 0


def add_subparsers(sub: Any) -> None:
    """Mount ``extract``, ``concepts``, ``shift`` and ``steer`` on the package CLI."""
    from .._cli_common import count, finite, index, positive

    ex = sub.add_parser("extract", help="extract one feature per sample to a resumable folder")
    ex.add_argument("--model", default="toy:toy-llava", help="a checkpoint path or hub id, or toy:<name>")
    ex.add_argument("--dtype", default=None, choices=DTYPES, help="model dtype (default: the loader's)")
    ex.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    ex.add_argument(
        "--hook",
        required=True,
        help="one or several comma-separated hook names, read in one pass "
        "(e.g. blocks.15.hook_resid_post,blocks.31.hook_resid_post)",
    )
    ex.add_argument(
        "--rule",
        default="last",
        choices=RULES,
        help="which token(s) of each sample give its feature (docs/concepts.md)",
    )
    ex.add_argument("--token", default=None, help="the word (or comma-separated words of a token class)")
    ex.add_argument(
        "--search",
        default="answer",
        choices=("answer", "prompt"),
        help="where --rule token / predicting looks for --token",
    )
    ex.add_argument(
        "--reduce", default="first", choices=("first", "last", "mean"), help="over a word's sub-tokens"
    )
    ex.add_argument("--start", type=int, default=None, help="token range start for --rule range")
    ex.add_argument("--end", type=int, default=None, help="token range end for --rule range")
    ex.add_argument("--position", type=int, default=None, help="token position for --rule position")
    ex.add_argument(
        "--max-new-tokens", type=count, default=12, help="answer length when the rule needs the answer"
    )
    ex.add_argument(
        "--predict", action="store_true", help="also generate and record each answer (needed by steer)"
    )
    ex.add_argument("--images", default=None, help="a folder of images (default: toy scenes)")
    ex.add_argument("--jsonl", default=None, help='a JSON-lines file of {"id", "image": path, "prompt"}')
    ex.add_argument(
        "--hf-dataset", default=None, help="a Hugging Face dataset as name[:split] (needs datasets)"
    )
    ex.add_argument("--image-column", default="image", help="--hf-dataset: the column holding images")
    ex.add_argument("--prompt-column", default="prompt", help="--hf-dataset: the column holding prompts")
    ex.add_argument(
        "--id-column", default=None, help="--hf-dataset: the column of sample ids (default: row index)"
    )
    ex.add_argument("--prompt", default=None, help="one prompt for every sample (overrides the dataset's)")
    ex.add_argument(
        "--shard-size", type=count, default=256, help="samples per shard (progress is saved per shard)"
    )
    ex.add_argument("--qtype", default=None, help="toy question type instead of the caption prompt")
    ex.add_argument("--n", type=count, default=200, help="toy scenes: how many")
    ex.add_argument("--seed", type=int, default=0, help="toy scenes: the world seed")
    ex.add_argument("--batch-size", type=count, default=16, help="samples per forward pass")
    ex.add_argument(
        "--out", required=True, help="the feature store folder (created, or resumed if compatible)"
    )
    ex.add_argument(
        "--ranks",
        type=count,
        default=None,
        help="data-parallel: the number of processes writing "
        "into --out (each is given its --rank); under torchrun both come from its environment",
    )
    ex.add_argument(
        "--rank", type=index, default=None, help="data-parallel: this process's rank, 0 to --ranks - 1"
    )
    ex.set_defaults(func=_cmd_extract)
    co = sub.add_parser("concepts", help="learn a concept dictionary from extracted features")
    co.add_argument("--features", required=True, help="a feature store written by `extract`")
    co.add_argument("--hook", default=None, help="the hook point to use, when the store holds several")
    co.add_argument(
        "--method",
        default="seminmf",
        choices=METHODS,
        help="sparse is the papers' objective, dictlearn the reference code's scikit-learn version (slow)",
    )
    co.add_argument(
        "--alpha", dest="dec_alpha", type=positive, default=None, help="L1 weight of sparse / dictlearn"
    )
    co.add_argument(
        "--max-iter", type=count, default=None, help="iterations of the decomposer (its own default)"
    )
    co.add_argument(
        "--batch-size",
        dest="dec_batch_size",
        type=count,
        default=None,
        help="sparse: rows per minibatch (online fit for data too large for one batch)",
    )
    co.add_argument("--device", default=None, help="seminmf / sparse: torch device, e.g. cuda")
    co.add_argument("--k", type=count, default=20, help="number of concepts")
    co.add_argument("--seed", type=int, default=0, help="random state of the decomposer")
    co.add_argument("--model", default=None, help="ground the concepts in words with this model")
    co.add_argument("--out", required=True, help="an .npz with components, activations, ids")
    co.set_defaults(func=_cmd_concepts)
    sh = sub.add_parser("shift", help="concept shift between an original and a fine-tuned model's features")
    sh.add_argument("--original", required=True, help="feature store of the original model")
    sh.add_argument("--finetuned", required=True, help="feature store of the fine-tuned model (same samples)")
    sh.add_argument("--hook", default=None, help="the hook point to use, when the stores hold several")
    sh.add_argument("--method", default="kmeans", choices=METHODS, help="decomposer of both models' features")
    sh.add_argument("--k", type=count, default=10, help="number of concepts")
    sh.add_argument("--alpha", type=finite, default=1.0, help="shifted concepts: u_a + alpha * D")
    sh.add_argument("--seed", type=int, default=0, help="random state of the decomposer")
    sh.add_argument(
        "--reduce",
        default="mean",
        choices=("mean", "median", "trimmed"),
        help="how per-sample shifts are averaged into a concept's shift vector",
    )
    sh.add_argument(
        "--match-on",
        default="shifted",
        choices=("shifted", "original"),
        help="match b's concepts to the shifted (default) or the original concepts of a",
    )
    sh.add_argument(
        "--out",
        required=True,
        help="a path stem: the JSON report goes to STEM.json and the arrays to STEM.npz",
    )
    sh.set_defaults(func=_cmd_shift)
    st = sub.add_parser(
        "steer", help="compute a mean-difference steering vector, and/or apply and evaluate one"
    )
    st.add_argument(
        "--features", default=None, help="a store extracted with --predict (to compute the vector)"
    )
    st.add_argument("--hook", default=None, help="the hook point to use, when the store holds several")
    st.add_argument("--vector", default=None, help="a .pt vector to evaluate instead of computing one")
    st.add_argument(
        "--source", default=None, help="the answer to steer away from (also picks the targeted rows)"
    )
    st.add_argument("--target", required=True, help="the answer to steer toward")
    st.add_argument("--out", default=None, help="a .pt file for the computed vector")
    st.add_argument(
        "--evaluate",
        default=None,
        help='a JSONL of {"image", "prompt", "answer" or "answers", '
        '"answer_type"}: rows answered --source are targeted, the others measure side effects',
    )
    st.add_argument("--model", default=None, help="model to evaluate with (default: the store's model)")
    st.add_argument("--dtype", default=None, choices=DTYPES, help="model dtype (default: the loader's)")
    st.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    st.add_argument(
        "--layer", type=index, default=None, help="add the vector to blocks.LAYER.hook_resid_post"
    )
    st.add_argument(
        "--alpha", type=finite, nargs="+", default=[1.0], help="one or several strengths to sweep"
    )
    st.add_argument(
        "--schedule",
        default="all",
        choices=("all", "prompt", "image", "text", "last", "generated"),
        help="positions the vector is added at",
    )
    st.add_argument("--batch-size", type=count, default=16, help="rows per generate call")
    st.add_argument("--max-new-tokens", type=count, default=3, help="answer length")
    st.add_argument("--report", default=None, help="a JSON file for the evaluation")
    st.set_defaults(func=_cmd_steer)
