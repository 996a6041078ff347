"""Which keywords a run method of ``HookedMLLM`` accepts besides its own: the HF model's inputs and options.

Every run method (``forward``, ``run_with_hooks``, ``run_with_cache``, ``generate``,
``trace``) takes the model's HF input tensors (every key its processor returns) and HF
call options as keywords; anything else is a ``TypeError`` naming the keyword, the closest
accepted one, and, for a TransformerLens keyword with no counterpart here, what to do
instead.

Contents: :func:`input_names`, :func:`check`.

Examples:
    >>> check("run_with_cache", {"names_filtr": None}, ("names_filter",), frozenset({"input_ids"}))
    Traceback (most recent call last):
    ...
    TypeError: run_with_cache() got an unknown argument 'names_filtr'; did you mean 'names_filter'? ...
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence

import torch

# Options every HF forward takes through ``**kwargs`` besides its named inputs.
HF_OPTIONS = frozenset(
    {
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "use_cache",
        "output_router_logits",
        "cache_position",
    }
)
# TransformerLens keywords with no counterpart here, and what to do instead.
TL_HINTS = {
    "return_cache_object": "run_with_cache always returns an ActivationCache",
    "reset_hooks_end": "hooks given to a run are always removed when it ends; use model.hooks() to keep them",
    "clear_contexts": "hooks given to a run are always removed when it ends",
}


def input_names(hf_model: torch.nn.Module) -> frozenset[str]:
    """The named inputs of ``hf_model``'s forward (every key its processor returns)."""
    params = inspect.signature(hf_model.forward).parameters
    return frozenset(n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def check(method: str, keywords: dict, own: Sequence[str], inputs: frozenset[str]) -> None:
    """Raise ``TypeError`` for a keyword that is neither ``method``'s own nor an HF input (``inputs``) or
    option.
    """
    allowed = inputs | HF_OPTIONS
    for key in keywords:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, [*own, *sorted(allowed)], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        extra = f" ({TL_HINTS[key]})" if key in TL_HINTS else ""
        raise TypeError(
            f"{method}() got an unknown argument {key!r}{hint}{extra} It takes "
            f"{', '.join(own) + ' and ' if own else ''}the model's HF inputs ({', '.join(sorted(inputs))})."
        )
