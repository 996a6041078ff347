"""Refusing transformers' tensor parallelism, which the installed nnsight cannot trace.

transformers 5.24 loads a model tensor-parallel (``tp_plan="auto"``, ``tp_size``, a
``distributed_config``) on CPU with gloo as well as on GPUs, and its plain forward is right. But
every run of :class:`~hooked_mllm.HookedMLLM` goes through nnsight, and nnsight 0.8.1 cannot
trace such a model: its controller takes the ``forward`` slot in which transformers installs
each sharded module's input and output transforms, so the first sharded module fails with
``got mixed torch.Tensor and DTensor``; nnsight's own tensor-parallel support, which would put
those transforms back, imports ``transformers.distributed.tensor_parallel._get_parameter_plan``,
which transformers 5.24 no longer has. ``benchmarks/tensor_parallel_probe.py`` shows both under
``torchrun``. Until that changes, a tensor-parallel request is refused before anything loads.

Used by :mod:`hooked_mllm.model` (``from_pretrained`` and the wrapper's constructor).

Examples:
    >>> refuse_tensor_parallel({"dtype": "float32"})   # nothing asked: returns
"""

from __future__ import annotations

from typing import Any

#: Loading arguments of transformers that ask for tensor parallelism.
TP_ARGUMENTS = ("tp_plan", "tp_size", "distributed_config")

REASON = (
    "nnsight 0.8.1 cannot trace a tensor-parallel transformers 5.24 model: its wrapper takes the forward "
    "slot where transformers installs each sharded module's transforms (the first forward fails with "
    "'got mixed torch.Tensor and DTensor'), and its own tensor-parallel support imports "
    "transformers.distributed.tensor_parallel._get_parameter_plan, which transformers 5.24 removed. Split a "
    "model too large for one device with device_map='auto' (and max_memory), or speed up feature extraction "
    "with data-parallel processes (torchrun ... -m hooked_mllm.cli -- extract; see docs/scale.md)."
)


def refuse_tensor_parallel(kwargs: dict[str, Any] | None = None, model: Any = None) -> None:
    """Raise a ValueError if loading ``kwargs`` ask for tensor parallelism or ``model`` is sharded."""
    kwargs = dict(kwargs or {})
    config = kwargs.pop("distributed_config", None)
    asked = [k for k in TP_ARGUMENTS if kwargs.get(k) not in (None, 1)]
    tp_size = getattr(config, "tp_size", None) or 1
    if config is not None and (getattr(config, "tp_plan", None) or tp_size > 1):
        asked.append("distributed_config")
    if asked:
        raise ValueError(
            f"Tensor parallelism ({', '.join(f'{k}=' for k in asked)}) is not supported: {REASON}"
        )
    mesh = getattr(model, "_device_mesh", None)
    if mesh is not None and getattr(mesh, "size", lambda: 1)() > 1:
        raise ValueError(
            f"This model is sharded across {mesh.size()} ranks (tensor parallelism), which is "
            f"not supported: {REASON}"
        )
