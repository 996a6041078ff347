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
    "pos_slice": "run_with_cache keeps positions with positions=...; pos_slice= is for the cache's helpers",
    "prepend_bos": "pass model.to_tokens(text, prepend_bos=...) instead of the text",
    "padding_side": "pass model.to_tokens(texts, padding_side=...) instead of the texts",
}
# TransformerLens' generate keywords: a HF name for each one kept, or why it is refused.
TL_GENERATE = {
    "use_past_kv_cache": "use_cache",
    "eos_token_id": "eos_token_id",
    "verbose": None,  # no progress bar here: accepted and ignored
}
TL_GENERATE_REFUSED = {
    "stop_at_eos": "generation stops at the end-of-sequence token as HF generate does; stop_at_eos=False "
    "has no HF counterpart",
    "return_type": "generate returns a GenerationOutput (.sequences, .new_tokens, .text)",
    "prepend_bos": "tokenize with model.text_batch(text, prepend_bos=...) and pass the batch",
    "padding_side": "tokenize with model.text_batch(text, padding_side=...) and pass the batch",
    "freq_penalty": "use HF's repetition_penalty=",
    "input": "pass the prompt first, or a batch",
}


def generate_options(kwargs: dict, max_new_tokens: int, do_sample: bool) -> dict:
    """HF ``generate`` options from ``model.generate``'s keywords, TransformerLens' mapped to HF's.

    Raises:
        TypeError: a TransformerLens keyword with no HF counterpart (says what to do instead).

    Examples:
        >>> generate_options({"use_past_kv_cache": False, "verbose": False}, 4, False)
        {'use_cache': False, 'max_new_tokens': 4, 'do_sample': False}
    """
    options: dict[str, object] = {}
    for key, value in kwargs.items():
        if key in TL_GENERATE_REFUSED and not (key == "stop_at_eos" and value is True):
            raise TypeError(f"generate() got TransformerLens' {key}={value!r}: {TL_GENERATE_REFUSED[key]}.")
        if key in TL_GENERATE or key == "stop_at_eos":
            target = TL_GENERATE.get(key)
            if target is not None:
                options[target] = value
            continue
        options[key] = value
    return dict(options, max_new_tokens=max_new_tokens, do_sample=do_sample)


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
