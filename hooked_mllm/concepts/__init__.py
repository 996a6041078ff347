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

Example:
    >>> from hooked_mllm.concepts import make_decomposer
    >>> model = make_decomposer("seminmf", n_components=20, random_state=0)   # doctest: +SKIP
    >>> activations = model.fit_transform(features)                            # doctest: +SKIP
"""

from .decompose import DECOMPOSERS as DECOMPOSERS
from .decompose import ConceptDecomposer as ConceptDecomposer
from .decompose import DictionaryLearningSemiNMF as DictionaryLearningSemiNMF
from .decompose import ICAConcepts as ICAConcepts
from .decompose import KMeansConcepts as KMeansConcepts
from .decompose import NMFConcepts as NMFConcepts
from .decompose import PCAConcepts as PCAConcepts
from .decompose import SemiNMF as SemiNMF
from .decompose import SparseDictionary as SparseDictionary
from .decompose import TopNormConcepts as TopNormConcepts
from .decompose import make_decomposer as make_decomposer
from ._store import Features as Features
from .data import Sample as Sample
from .data import folder_dataset as folder_dataset
from .data import hf_dataset as hf_dataset
from .data import jsonl_dataset as jsonl_dataset
from .data import toy_dataset as toy_dataset
from .extract import TokenRule as TokenRule
from .extract import extract as extract
from .grounding import concept_map as concept_map
from .grounding import shift_grounding as shift_grounding
from .grounding import text_grounding as text_grounding
from .grounding import visual_grounding as visual_grounding
from .metrics import DEFAULT_TEMPLATE as DEFAULT_TEMPLATE
from .metrics import CLIPScorer as CLIPScorer
from .metrics import ImageTextScorer as ImageTextScorer
from .metrics import clip_concept_score as clip_concept_score
from .metrics import random_word_lists as random_word_lists
from .metrics import Sparsity as Sparsity
from .metrics import attribute_recovery as attribute_recovery
from .metrics import clip_style_score as clip_style_score
from .metrics import concept_overlap as concept_overlap
from .metrics import hoyer_sparsity as hoyer_sparsity
from .metrics import overlap_matrix as overlap_matrix
from .metrics import project as project
from .metrics import reconstruction_error as reconstruction_error
from .metrics import sparsity as sparsity
from .metrics import top_concept_words as top_concept_words
from .steering import SteeringReport as SteeringReport
from .steering import concept_difference as concept_difference
from .steering import evaluate_steering as evaluate_steering
from .steering import normalize_answer as normalize_answer
from .steering import rank_steering_vectors as rank_steering_vectors
from .steering import vqa_accuracy as vqa_accuracy
from .steering import mean_difference as mean_difference
from .steering import split_by as split_by
from .steering import steering_hooks as steering_hooks
from .shift import ConceptMatching as ConceptMatching
from .shift import ShiftImprovement as ShiftImprovement
from .shift import ShiftResult as ShiftResult
from .shift import align_ids as align_ids
from .shift import analyze_shift as analyze_shift
from .shift import assign_concepts as assign_concepts
from .shift import concept_shift_vectors as concept_shift_vectors
from .shift import match_concepts as match_concepts
from .shift import shift_consistency as shift_consistency
from .shift import shift_baselines as shift_baselines
from .shift import shift_improvement as shift_improvement
from .shift import shifted_concepts as shifted_concepts
