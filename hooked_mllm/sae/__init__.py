"""Sparse autoencoders with SAELens: splice them into hook points, train them on streamed activations,
measure them.

Needs the ``sae`` extra (``pip install 'hooked-mllm[sae]'``: sae-lens 6.x); sae_lens is imported only
when an SAE is used. Splicing is a set of methods of every :class:`~hooked_mllm.HookedMLLM`
(``model.add_sae``, ``reset_saes``, ``saes``, ``run_with_saes``, ``run_with_cache_with_saes``:
:mod:`hooked_mllm.sae._splice`); :mod:`.train` streams activations into SAELens' trainer
(:func:`train_sae`, ``hooked-mllm sae train``); :mod:`.evaluate` gives L0, explained variance, dead
features and the LM loss recovered (:func:`evaluate_sae`); :mod:`.study` scores an SAE's features
against the toy world's ground truth beside the concept dictionaries and steers with them
(:func:`run_study`, ``hooked-mllm sae study``).

Examples:
    >>> from hooked_mllm.sae import train_sae, evaluate_sae                          # doctest: +SKIP
    >>> sae = train_sae(model, data, "blocks.2.hook_resid_post", positions="image")  # doctest: +SKIP
    >>> model.add_sae(sae)                                                           # doctest: +SKIP
"""

from .._lazy import lazy_exports

_NAMES = {
    "SAE_HOOKS": "._splice",
    "SAESpliceMixin": "._splice",
    "ARCHITECTURES": ".train",
    "activation_batches": ".train",
    "token_activations": ".train",
    "train_sae": ".train",
    "training_config": ".train",
    "SAEMetrics": ".evaluate",
    "evaluate_sae": ".evaluate",
    "FeatureExample": ".features",
    "decoder_words": ".features",
    "feature_html": ".features",
    "top_examples": ".features",
    "write_feature_page": ".features",
    "ConceptScore": ".study",
    "SteeringOutcome": ".study",
    "StudyResult": ".study",
    "auroc": ".study",
    "image_token_activations": ".study",
    "image_token_labels": ".study",
    "run_study": ".study",
    "score_units": ".study",
    "steer_colour": ".study",
}
_MODULES: dict[str, str] = {}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _MODULES)

__all__ = sorted({*_NAMES, *_MODULES})
