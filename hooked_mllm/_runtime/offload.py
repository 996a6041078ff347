"""Weights of a module as real tensors, also when accelerate has offloaded them.

With ``device_map`` offloading (accelerate), an offloaded module's parameters sit on the
``meta`` device and are loaded from an offload map only while the module runs. Code that
reads weights directly (``W_U``, ``W_O``, norm weights for ``apply_ln_to_stack``) goes
through :func:`parameter`, which loads them from that map; :func:`execution_device` is
where inputs must go.

Examples:
    >>> import torch
    >>> parameter(torch.nn.Linear(2, 3), "weight").shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _hooks(module: torch.nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def parameter(module: torch.nn.Module, name: str = "weight") -> Tensor:
    """``module.<name>`` as a tensor with data, loaded from accelerate's offload map if needed.

    Raises:
        ValueError: if the parameter is on the meta device and nothing says where its data is.
    """
    value = getattr(module, name)
    if value is None or value.device.type != "meta":
        return value
    for hook in _hooks(module):
        weights = getattr(hook, "weights_map", None)
        if weights is not None and name in weights:
            device = getattr(hook, "execution_device", None) or "cpu"
            return weights[name].to(device=device, dtype=value.dtype)
    raise ValueError(
        f"{type(module).__name__}.{name} is on the meta device and has no offload map: "
        "load the model with real weights (or with accelerate's device_map offloading)."
    )


def execution_device(model: torch.nn.Module) -> torch.device:
    """The device inputs go to: accelerate's execution device if the model is dispatched, else its first
    parameter's device."""
    if getattr(model, "hf_device_map", None):
        for module in model.modules():
            for hook in _hooks(module):
                device = getattr(hook, "execution_device", None)
                if device is not None:
                    return torch.device(device)
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")
