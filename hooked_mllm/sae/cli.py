"""``hooked-mllm sae train``: train a SAELens SAE on one hook point's activations, save it in SAELens'
format and report its metrics; ``hooked-mllm sae study``: the toy-world study of :mod:`.study` (SAE
features and concept dictionaries against the ground truth, colour steering) as Markdown (needs the
``sae`` extra).

Example::

    hooked-mllm sae train --model toy:toy-llava --hook blocks.2.hook_resid_post --positions image \\
        --architecture topk --k 16 --d-sae 512 --tokens 50000 --out saes/resid2-image
    hooked-mllm sae study --hook blocks.1.hook_resid_post --out reports/sae_study.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")  # train.ARCHITECTURES (no torch for --help)


def _dataset(args: argparse.Namespace, seed: int) -> Any:
    from ..concepts.data import folder_dataset, jsonl_dataset, toy_dataset

    if args.images:
        return folder_dataset(args.images, args.prompt or "describe the image .")
    if args.jsonl:
        return jsonl_dataset(args.jsonl, prompt=args.prompt)
    return toy_dataset(args.n, seed=seed, prompt=args.prompt)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..cli import load_model
    from .evaluate import evaluate_sae
    from .train import train_sae

    options: dict[str, Any] = {}
    if args.k is not None:
        options["k"] = args.k
    if args.l1 is not None:
        options["l1_coefficient"] = args.l1
    model = load_model(args.model, args.dtype, args.device)
    data = list(_dataset(args, args.seed))
    sae = train_sae(
        model,
        data,
        args.hook,
        positions=args.positions,
        architecture=args.architecture,
        d_sae=args.d_sae,
        total_tokens=args.tokens,
        train_batch_size=args.train_batch_size,
        lr=args.lr,
        batch_size=args.batch_size,
        out=args.out,
        n_checkpoints=args.checkpoints,
        resume_from=args.resume,
        seed=args.seed,
        device=args.device or "cpu",
        **options,
    )
    held_out = (
        list(_dataset(args, args.eval_seed))[: args.eval_n] if not (args.images or args.jsonl) else data
    )
    metrics = evaluate_sae(model, sae, held_out, positions=args.positions, batch_size=args.batch_size)
    (Path(args.out) / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=2), encoding="utf-8")
    print(f"SAE saved to {args.out} (SAELens format: SAE.load_from_disk)")
    for name, value in metrics.as_dict().items():
        print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from ..cli import load_model
    from .study import run_study

    model = load_model(args.model, args.dtype, args.device)
    options: dict[str, Any] = {} if args.k is None else {"k": args.k}
    dictionaries = tuple(d for d in args.dictionaries.split(",") if d)
    parts = [f"# SAE study: {args.model}", ""]
    for hook in args.hook:
        result = run_study(
            model, hook, n_train=args.n_train, n_select=args.n_select, n_test=args.n_test,
            architecture=args.architecture, d_sae=args.d_sae, total_tokens=args.tokens, lr=args.lr,
            n_components=args.components, dictionaries=dictionaries,
            steer_scenes=args.steer_scenes, steer_strengths=tuple(args.strengths), batch_size=args.batch_size,
            seed=args.seed, **options,
        )  # fmt: skip
        m = result.metrics
        parts += [
            f"## {result.hook_name}",
            "",
            f"SAE: {args.architecture}, d_sae {args.d_sae}, {args.tokens} training tokens; on the test image "
            f"tokens L0 {m.l0:.2f}, explained variance {m.explained_variance:.3f}, dead features "
            f"{m.dead_features} of {args.d_sae}. Tokens: {result.n_tokens}.",
            "",
            "Best unit per value (chosen on the selection scenes; AUROC / F1 on the test scenes):",
            "",
            result.markdown(),
            "",
            "Values of colour and shape without an SAE feature of AUROC >= 0.95: "
            f"{', '.join(result.unmet()) or 'none'}.",
            "",
        ]
        if result.steering:
            parts += ["Steering (blue objects, the red feature raised):", "", result.steering_markdown(), ""]
    text = "\n".join(parts)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


def add_subparsers(sub: Any) -> None:
    """Mount ``sae train`` on the package CLI."""
    sae = sub.add_parser("sae", help="sparse autoencoders with SAELens (needs the sae extra)")
    commands = sae.add_subparsers(dest="sae_command", required=True, metavar="SAE_COMMAND")
    tr = commands.add_parser("train", help="train an SAE on one hook point's activations")
    tr.add_argument(
        "--model", default="toy:toy-llava", help="toy:<name>, tiny:llava, a checkpoint path or hub id"
    )
    tr.add_argument("--dtype", default=None, help="model dtype (float32, float16, bfloat16)")
    tr.add_argument("--device", default=None, help="where the model and the SAE run (e.g. cuda)")
    tr.add_argument("--hook", required=True, help="the hook point (LM, vision tower or projector)")
    tr.add_argument("--positions", default="all", help="tokens trained on: image, text or all (LM points)")
    tr.add_argument("--architecture", default="standard", choices=_ARCHITECTURES, help="SAELens architecture")
    tr.add_argument("--d-sae", type=int, default=None, help="number of features (default 4 x d_in)")
    tr.add_argument("--k", type=int, default=None, help="active features per token (topk, batchtopk)")
    tr.add_argument("--l1", type=float, default=None, help="L1 coefficient (standard)")
    tr.add_argument("--tokens", type=int, default=20_000, help="training tokens in all")
    tr.add_argument("--train-batch-size", type=int, default=256, help="tokens per optimiser step")
    tr.add_argument("--lr", type=float, default=3e-4, help="learning rate")
    tr.add_argument("--batch-size", type=int, default=8, help="samples per model forward")
    tr.add_argument("--checkpoints", type=int, default=0, help="checkpoints saved during training")
    tr.add_argument("--resume", default=None, help="a checkpoint folder to continue from")
    tr.add_argument("--out", required=True, help="folder the SAE (and metrics.json) is written to")
    tr.add_argument("--images", default=None, help="a folder of images (default: toy scenes)")
    tr.add_argument("--jsonl", default=None, help='a JSON-lines file of {"id", "image": path, "prompt"}')
    tr.add_argument("--prompt", default=None, help="one prompt for every sample")
    tr.add_argument("--n", type=int, default=200, help="toy scenes to train on")
    tr.add_argument("--seed", type=int, default=0, help="toy world seed and training seed")
    tr.add_argument("--eval-n", type=int, default=50, help="held-out toy scenes the metrics are measured on")
    tr.add_argument("--eval-seed", type=int, default=10_000, help="world seed of the held-out scenes")
    tr.set_defaults(func=_cmd_train)

    st = commands.add_parser(
        "study", help="SAE features vs the toy world's ground truth, and colour steering"
    )
    st.add_argument("--model", default="toy:toy-llava-deep", help="a toy checkpoint (toy:<name>)")
    st.add_argument("--dtype", default=None, help="model dtype")
    st.add_argument("--device", default=None, help="where the model and the SAE run")
    st.add_argument("--hook", action="append", required=True, help="a hook point (repeat for several)")
    st.add_argument("--architecture", default="topk", choices=_ARCHITECTURES, help="SAELens architecture")
    st.add_argument("--d-sae", type=int, default=512, help="number of features")
    st.add_argument("--k", type=int, default=None, help="active features per token (topk: default 8)")
    st.add_argument("--tokens", type=int, default=60_000, help="training tokens in all")
    st.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    st.add_argument("--n-train", type=int, default=300, help="training scenes (SAE and dictionaries)")
    st.add_argument("--n-select", type=int, default=100, help="scenes the best unit is chosen on")
    st.add_argument("--n-test", type=int, default=100, help="scenes the chosen unit is scored on")
    st.add_argument("--components", type=int, default=32, help="concepts per dictionary")
    st.add_argument("--dictionaries", default="seminmf,sparse,kmeans", help="comma-separated; '' for none")
    st.add_argument("--steer-scenes", type=int, default=200, help="scenes for the steering test")
    st.add_argument("--strengths", type=float, nargs="*", default=[1.0, 2.0, 4.0], help="steering strengths")
    st.add_argument("--batch-size", type=int, default=32, help="samples per forward")
    st.add_argument("--seed", type=int, default=0, help="training seed")
    st.add_argument("--out", default=None, help="write the Markdown report there too")
    st.set_defaults(func=_cmd_study)
