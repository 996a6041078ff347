"""TransformerLens 4.3 ``TransformerBridge`` on a local (tiny) LLaVA checkpoint, offline.

Test/benchmark helper, not part of the package. Everything here works without network
access and without a model hub: the checkpoint is a local directory written by
``save_pretrained`` (see :func:`save_tiny_llava`).

Recipe (what :func:`load_bridge` does)::

    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers
    helpers._ensure_torchvision = lambda: False  # (restored afterwards) else boot may try
                                                 # `pip install torchvision` when the dir
                                                 # has no loadable AutoProcessor
    bridge = TransformerBridge.boot_transformers(
        checkpoint_dir,            # a local dir: AutoConfig/AutoModelForImageTextToText read it
        device="cpu",
        dtype=torch.float32,
        tokenizer=tok,             # None = AutoTokenizer on the dir; a dir without tokenizer
        hf_model=None,             # files fails (no sentencepiece) -> pass a tiny one
    )                              # hf_model=: wrap an already-loaded model instead
    bridge.eval()
    logits, cache = bridge.run_with_cache(
        input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
        names_filter=lambda n: n.endswith("hook_resid_post"),
    )
    cache["blocks.{l}.hook_resid_post"]   # [batch, pos, d_model], LM layer l

What the bridge does to the HF model (``bridge.original_model``), as verified by
tests/test_tl_bridge.py on transformer-lens 4.3.0 / transformers 5:

* It loads the model with ``attn_implementation="eager"`` (the LLaVA adapter sets
  ``cfg.attn_implementation = "eager"``; a pre-loaded ``hf_model=`` in sdpa is switched
  to eager in place too), so ``hook_pattern`` / ``hook_attn_scores`` fire.
* Parameters are cast to ``dtype`` (default float32). Weights are *not* processed:
  no LayerNorm folding, no centering, no unembed centering, unless
  ``bridge.enable_compatibility_mode()`` is called (we never call it). Values are
  bit-identical to the checkpoint.
* It modifies the module tree in place: every mapped submodule (vision tower, projector,
  embed_tokens, each decoder layer, its norms/attention/projections/MLP, final norm,
  lm_head) is replaced by a bridge wrapper holding the HF module as
  ``_original_component``; so ``state_dict()`` keys gain ``._original_component`` and
  alias keys (``self_attn.q`` = ``q_proj`` ...). Its hook points are always installed
  (a no-op unless a hook/cache is active); it also adds forward pre-hooks on
  ``input_layernorm`` / ``post_attention_layernorm`` of each block.
* Importing ``transformer_lens.model_bridge`` sets the ``transformers`` logger level to
  ERROR and adds a global ``warnings`` ignore for "generation flags ... not valid".
* With a 2-D ``attention_mask`` containing left padding it passes mask-derived
  ``position_ids`` (``cumsum - 1``) to HF; with RoPE this only shifts whole rows, so
  activations at attended positions match HF without ``position_ids`` to float error.

Hook names (LM layer ``l``): resid_pre ``blocks.{l}.hook_resid_pre`` (== HF
hidden_states[0] for l=0, i.e. after image features are merged), resid_mid
``blocks.{l}.hook_resid_mid``, resid_post ``blocks.{l}.hook_resid_post`` (alias
``blocks.{l}.hook_out``), attn_out ``blocks.{l}.hook_attn_out``, mlp_out
``blocks.{l}.hook_mlp_out``, pattern ``blocks.{l}.attn.hook_pattern`` [b, head, q, k],
scores ``blocks.{l}.attn.hook_attn_scores``, q/k/v/z ``blocks.{l}.attn.hook_{q,k,v,z}``
[b, pos, head, d_head] (k/v with n_kv_heads), final norm ``ln_final.hook_normalized``,
logits ``unembed.hook_out``; vision: ``vision_encoder.encoder_layers.{i}.hook_resid_post``,
``vision_encoder.hook_out``, projector ``vision_projector.hook_out``. Note
``embed.hook_out``/``hook_embed`` is the raw token embedding *before* image features
are scattered in.

Parity with HF ``output_hidden_states``: in transformers 5 the last element of
``hidden_states`` is the *final-normed* output, so ``blocks.{l}.hook_resid_post ==
hidden_states[l + 1]`` for ``l < n_layers - 1`` and ``hidden_states[n_layers] ==
ln_final.hook_normalized``; the last block's raw output equals
``blocks.{n_layers-1}.hook_resid_post``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

NamesFilter = None | str | Sequence[str] | Callable[[str], bool]

# Canonical bridge hook names for one LM layer.
HOOK_NAMES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def hook_name(kind: str, layer: int) -> str:
    """Bridge cache key for ``kind`` (a key of :data:`HOOK_NAMES`) at LM layer ``layer``."""
    return HOOK_NAMES[kind].format(layer=layer)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence only TransformerLens' own deprecation/future notices.

    On transformer-lens 4.3.0 + transformers 5 the import, boot and forward of this LLaVA
    emit no warning at all (checked with ``simplefilter("always")``); this guard only
    keeps a TL-side deprecation notice from failing a ``filterwarnings=error`` run.
    Anything else (including UserWarnings) still surfaces.
    """
    with warnings.catch_warnings():
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"transformer_lens(\.|$)")
        yield


def make_tiny_tokenizer(vocab_size: int = 100, image_token_id: int | None = 99):
    """A word-level fast tokenizer built locally (no download, no sentencepiece).

    Vocabulary: ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3, ``w{i}`` for the rest, and
    ``<image>`` at ``image_token_id``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for i in range(4, vocab_size):
        vocab["<image>" if i == image_token_id else f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs: dict[str, Any] = {}
    if image_token_id is not None and image_token_id < vocab_size:
        kwargs["additional_special_tokens"] = ["<image>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        **kwargs,
    )
    # TL's setup_tokenizer reads init_kwargs["name_or_path"] (KeyError for an in-memory
    # tokenizer) and, unless add_bos_token is set, reloads it from that path.
    tokenizer.init_kwargs.setdefault("name_or_path", "tiny-wordlevel")
    return tokenizer


def tiny_llava_config():
    """Config of a tiny random LLaVA (CLIP vision tower + Llama LM with GQA)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=99,
        image_seq_length=16,  # (32 / 8) ** 2 patches; CLS dropped by "default"
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def save_tiny_llava(path: str | os.PathLike, seed: int = 0, with_tokenizer: bool = True) -> str:
    """Build a random tiny ``LlavaForConditionalGeneration`` and ``save_pretrained`` it."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = tiny_llava_config()
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(str(path))
    if with_tokenizer:
        make_tiny_tokenizer(cfg.text_config.vocab_size, cfg.image_token_id).save_pretrained(str(path))
    return str(path)


def _has_tokenizer(checkpoint_dir: str) -> bool:
    return any(os.path.exists(os.path.join(checkpoint_dir, f)) for f in _TOKENIZER_FILES)


def load_bridge(
    checkpoint_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    hf_model: Any = None,
):
    """Boot a ``TransformerBridge`` on a local LLaVA directory, offline, in eval mode.

    * No tokenizer in the dir and none given: a tiny word-level one is built in memory
      (boot otherwise tries ``AutoTokenizer`` on the dir and fails).
    * ``hf_model``: an already-loaded model to wrap instead of loading from the dir
      (it is modified in place: submodules replaced by bridge wrappers, eager attention).
    * TL's ``load_modality_processor`` would ``pip install torchvision`` if the dir has no
      usable processor; that is disabled here (the processor is not needed: we feed
      ``pixel_values`` directly).
    """
    checkpoint_dir = str(checkpoint_dir)
    with _quiet():
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.model_bridge.sources.transformers import helpers as tl_hf_helpers

        if tokenizer is None and not _has_tokenizer(checkpoint_dir):
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(checkpoint_dir)
            text_cfg = getattr(cfg, "text_config", cfg)
            tokenizer = make_tiny_tokenizer(text_cfg.vocab_size, getattr(cfg, "image_token_id", None))

        original = tl_hf_helpers._ensure_torchvision
        tl_hf_helpers._ensure_torchvision = lambda: False  # never pip-install at boot
        try:
            bridge = TransformerBridge.boot_transformers(
                checkpoint_dir,
                device=device,
                dtype=dtype,
                tokenizer=tokenizer,
                hf_model=hf_model,
            )
        finally:
            tl_hf_helpers._ensure_torchvision = original
    bridge.eval()
    return bridge


def n_lm_layers(bridge) -> int:
    return int(bridge.cfg.n_layers)


def bridge_run_with_cache(
    bridge,
    names_filter: NamesFilter = None,
    *,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    grad: bool = False,
    **kwargs: Any,
):
    """``bridge.run_with_cache`` on multimodal inputs; returns ``(logits, cache)``.

    ``names_filter`` is passed through (None = every hook, a name, a list of names, or a
    predicate). Runs under ``torch.no_grad()`` unless ``grad=True`` (the bridge itself
    does not disable autograd).
    """
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx, _quiet():
        return bridge.run_with_cache(
            input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            names_filter=names_filter,
            **kwargs,
        )


def bridge_resid_post(
    bridge,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Per-LM-layer residual stream after each block: ``cache["blocks.{l}.hook_resid_post"]``.

    One ``[batch, pos, d_model]`` tensor per LM layer, from the bridge's own cache names.
    """
    names = [hook_name("resid_post", layer) for layer in range(n_lm_layers(bridge))]
    wanted = set(names)
    _, cache = bridge_run_with_cache(
        bridge,
        lambda name: name in wanted,
        input_ids=input_ids,
        pixel_values=pixel_values,
        attention_mask=attention_mask,
    )
    return [cache[name] for name in names]
