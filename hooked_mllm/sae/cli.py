"""``hooked-mllm sae train``: train a SAELens SAE on one hook point's activations, save it in SAELens'
format and report its metrics (needs the ``sae`` extra).

Example::

    hooked-mllm sae train --model toy:toy-llava --hook blocks.2.hook_resid_post --positions image \\
        --architecture topk --k 16 --d-sae 512 --tokens 50000 --out saes/resid2-image
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
    from .._cli_common import load_model
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
