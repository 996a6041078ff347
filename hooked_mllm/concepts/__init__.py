"""Concept dictionaries, grounding metrics and representation-shift analysis on cached features.

After CoX-LMM (concept dictionaries on token representations) and the fine-tuning
representation-shift paper: :mod:`.extract` (features of one or several hook points to a safe,
resumable, memory-mapped store; tokenizer-aware word rules), :mod:`.data` (lazy datasets),
:mod:`.decompose` (Semi-NMF, the papers' sparse dictionary (:mod:`.dictionary`), the reference
DictionaryLearning variant, k-means, PCA, NMF, ICA, top-norm samples; scikit-learn estimators),
:mod:`.metrics` (reconstruction, sparsity, word overlap, test-time projection, CLIPScore per
concept, random-words baseline, attribute recovery), :mod:`.shift` (per-concept shift vectors,
consistency, shifted concepts, Hungarian matching, improvement metrics and their baselines),
:mod:`.grounding` (words and images of concepts and shifts) and :mod:`.steering`
(mean-difference and concept-difference steering vectors applied through
:class:`hooked_mllm.hooks.Steer`, with a VQA-style evaluation and ranking).

Examples:
    >>> from hooked_mllm.concepts import make_decomposer
    >>> model = make_decomposer("seminmf", n_components=20, random_state=0)   # doctest: +SKIP
    >>> activations = model.fit_transform(features)                            # doctest: +SKIP
"""

from .._lazy import lazy_exports

_NAMES = {
    "DECOMPOSERS": ".decompose",
    "ConceptDecomposer": ".decompose",
    "DictionaryLearningSemiNMF": ".decompose",
    "ICAConcepts": ".decompose",
    "KMeansConcepts": ".decompose",
    "NMFConcepts": ".decompose",
    "PCAConcepts": ".decompose",
    "SemiNMF": ".decompose",
    "SparseDictionary": ".decompose",
    "TopNormConcepts": ".decompose",
    "make_decomposer": ".decompose",
    "Features": "._store",
    "Sample": ".data",
    "folder_dataset": ".data",
    "hf_dataset": ".data",
    "jsonl_dataset": ".data",
    "toy_dataset": ".data",
    "TokenRule": ".extract",
    "extract": ".extract",
    "concept_map": ".grounding",
    "shift_grounding": ".grounding",
    "text_grounding": ".grounding",
    "visual_grounding": ".grounding",
    "DEFAULT_TEMPLATE": ".metrics",
    "CLIPScorer": ".metrics",
    "ImageTextScorer": ".metrics",
    "clip_concept_score": ".metrics",
    "random_word_lists": ".metrics",
    "Sparsity": ".metrics",
    "attribute_recovery": ".metrics",
    "clip_style_score": ".metrics",
    "concept_overlap": ".metrics",
    "hoyer_sparsity": ".metrics",
    "overlap_matrix": ".metrics",
    "project": ".metrics",
    "reconstruction_error": ".metrics",
    "sparsity": ".metrics",
    "top_concept_words": ".metrics",
    "SteeringReport": ".steering",
    "concept_difference": ".steering",
    "evaluate_steering": ".steering",
    "normalize_answer": ".steering",
    "rank_steering_vectors": ".steering",
    "vqa_accuracy": ".steering",
    "mean_difference": ".steering",
    "split_by": ".steering",
    "steering_hooks": ".steering",
    "ConceptMatching": ".shift",
    "ShiftImprovement": ".shift",
    "ShiftResult": ".shift",
    "align_ids": ".shift",
    "analyze_shift": ".shift",
    "assign_concepts": ".shift",
    "concept_shift_vectors": ".shift",
    "match_concepts": ".shift",
    "shift_consistency": ".shift",
    "shift_baselines": ".shift",
    "shift_improvement": ".shift",
    "shifted_concepts": ".shift",
}
_MODULES: dict[str, str] = {}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _MODULES)

__all__ = sorted({*_NAMES, *_MODULES})
