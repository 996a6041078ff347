"""Score the toy video model and the library's video tools against the video world's ground truth.

Purpose:
    Three measurements on clips of a world seed never used in training (training uses seeds >= 20,000):

    - :func:`evaluate_video`: greedy answers per question type, with the moving object's ``first`` / ``last``
      questions (one frame shows the answer) apart from the still objects' ones, against chance;
    - :func:`video_pointing`: per-frame location maps (``batch.frames_as_images()``, one map per frame, the
      methods of :data:`hooked_mllm.toy.pointing.METHODS`): does the peak over all frames' cells fall on the
      asked object in a frame that shows the answer (joint), the named frame's peak on the object's cell
      (cell), the frame holding the highest peak the named one (frame);
    - :func:`frame_patching`: ``activation_patching(..., over="frame")`` from a clip into the same clip played
      backwards (the moving object's first and last cells swap): does the named frame carry the answer.

Connections:
    Clips from :class:`hooked_mllm.toy.video.VideoWorld`, prompts from
    :func:`hooked_mllm.toy.video_model.encode_clips`; tallies with the still model's evaluation
    (:mod:`hooked_mllm.toy.evaluation`), maps with the pointing game's methods
    (:mod:`hooked_mllm.toy.pointing`).

Examples:
    >>> from hooked_mllm.toy.model import load_video                              # doctest: +SKIP
    >>> model = load_video()                                                       # doctest: +SKIP
    >>> print(evaluate_video(model, seed=123, n=300).format())                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from hooked_mllm.toy.evaluation import _Tally
from hooked_mllm.toy.video import VIDEO_QTYPES, Clip, VideoQA, VideoWorld
from hooked_mllm.toy.world import GRID

__all__ = [
    "FramePatchingResult",
    "VIDEO_METHODS",
    "VideoEvalReport",
    "VideoPointingResult",
    "evaluate_video",
    "frame_patching",
    "point",
    "video_pointing",
]

REPORT_ROWS: tuple[str, ...] = (
    "first",
    "last",
    "moved",
    "first, moving",
    "last, moving",
    "first, still",
    "last, still",
)
"""Rows of :class:`VideoEvalReport`: each type, then ``first`` / ``last`` split by the object's motion."""

VIDEO_METHODS: tuple[str, ...] = ("heads_all", "heads_top_late", "attention", "input_x_gradient")
"""The pointing methods :func:`video_pointing` plays by default (names of
:data:`hooked_mllm.toy.pointing.METHODS`)."""


def _rows(qa: VideoQA, clip: Clip) -> list[str]:
    if qa.qtype == "moved":
        return ["moved"]
    motion = "moving" if qa.track == clip.mover else "still"
    return [qa.qtype, f"{qa.qtype}, {motion}"]


@dataclass(frozen=True, kw_only=True)
class VideoEvalReport:
    """Answer accuracy of a video model.

    Attributes:
        accuracy: row of :data:`REPORT_ROWS` -> fraction of exactly right greedy answers.
        counts: row -> questions asked.
        chance: row -> accuracy of a uniform guess among the answers of its kind (1/9 positions; for
            ``moved`` a random object of the clip).
        n_clips, seed: what was evaluated.
        errors: a few wrong answers, ``(qtype, question, expected, got)``.
    """

    accuracy: dict[str, float]
    counts: dict[str, int]
    chance: dict[str, float]
    n_clips: int
    seed: int
    errors: tuple[tuple[str, str, str, str], ...] = field(default=())

    def format(self) -> str:
        """A small text table."""
        lines = [f"toy video eval: {self.n_clips} clips, video world seed {self.seed}"]
        for row, acc in self.accuracy.items():
            n, chance = self.counts[row], 100 * self.chance[row]
            lines.append(f"  {row:<13} {100 * acc:6.2f}%  ({n} questions; chance {chance:.1f}%)")
        return "\n".join(lines)


def _items(clips: Sequence[Clip], qtypes: Sequence[str]) -> list[tuple[Clip, VideoQA]]:
    unknown = sorted(set(qtypes) - set(VIDEO_QTYPES))
    if unknown:
        raise ValueError(f"Unknown video question types {unknown}; expected some of {VIDEO_QTYPES}.")
    return [(c, qa) for c in clips for qa in c.questions if qa.qtype in qtypes]


def _hf_and_processor(model: Any, processor: Any) -> tuple[Any, Any]:
    if isinstance(model, str):
        from hooked_mllm.toy.model import load_video

        model = load_video(None if model == "toy-video" else model)
    if hasattr(model, "hf_model"):  # a HookedMLLM
        return model.hf_model, processor or model.processor
    if processor is None:
        raise ValueError(
            "Pass `processor=` with a Hugging Face model (or give a HookedMLLM or a checkpoint)."
        )
    return model, processor


@torch.no_grad()
def evaluate_video(
    model: Any,
    seed: int = 123,
    n: int = 300,
    *,
    processor: Any = None,
    batch_size: int = 128,
) -> VideoEvalReport:
    """Greedy answers to every question of ``n`` clips of ``VideoWorld(seed)``, scored by exact match.

    Args:
        model: a :class:`~hooked_mllm.HookedMLLM`, a ``LlavaOnevisionForConditionalGeneration`` (then pass
            ``processor``), ``"toy-video"`` or a checkpoint folder.
        seed: the video world seed (below 10,000: unseen in training).
        n: clips.

    Examples:
        >>> evaluate_video("toy-video", n=100).accuracy["last, moving"] > 0.5           # doctest: +SKIP
        True
    """
    from hooked_mllm.toy.video_model import encode_clips

    hf, proc = _hf_and_processor(model, processor)
    was_training = hf.training
    hf.eval()
    clips = VideoWorld(seed=seed).sample(n)
    items = _items(clips, VIDEO_QTYPES)
    tally = _Tally()
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = encode_clips(proc, [c for c, _ in chunk], [qa.question for _, qa in chunk])
            out = hf.generate(
                **batch,
                max_new_tokens=3,
                do_sample=False,
                pad_token_id=proc.tokenizer.pad_token_id,
                eos_token_id=proc.tokenizer.eos_token_id,
            )
            got = proc.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for (clip, qa), answer in zip(chunk, got):
                for row in _rows(qa, clip):
                    tally.add(row, qa.question, qa.answer, answer.strip())
    finally:
        hf.train(was_training)
    rows = [r for r in REPORT_ROWS if tally.total[r]]
    moved = [1 / len(c.tracks) for c, qa in items if qa.qtype == "moved"]
    chance = {r: (float(np.mean(moved)) if r == "moved" else 1 / GRID**2) for r in rows}
    return VideoEvalReport(
        accuracy={r: tally.right[r] / tally.total[r] for r in rows},
        counts={r: tally.total[r] for r in rows},
        chance=chance,
        n_clips=n,
        seed=seed,
        errors=tuple(tally.errors),
    )


def point(values: Float[np.ndarray, "time rows cols"], qa: VideoQA) -> dict[str, bool | None]:
    """Score one question's per-frame maps against its evidence.

    Args:
        values: the maps of every frame, ``[time, rows, cols]``.
        qa: the question (its :attr:`~hooked_mllm.toy.video.VideoQA.evidence` and named frame).

    Returns:
        ``joint``: the highest value over every frame's cells is at ``(frame, cell)`` of the evidence;
        ``cell``: in the named frame (every frame for ``moved``: all must hit), the peak is the object's
        cell there; ``frame``: the frame holding the highest value is the named one (None unless exactly
        one frame shows the answer).

    Examples:
        >>> qa = VideoQA(question="q", answer="a", qtype="last", track=0, frame=2, evidence=((2, 0, 1),))
        >>> v = np.zeros((3, 3, 3)); v[2, 0, 1] = 1.0
        >>> point(v, qa)
        {'joint': True, 'cell': True, 'frame': True}
    """
    time, rows, cols = values.shape
    flat = int(np.argmax(values))
    top = (flat // (rows * cols), (flat % (rows * cols)) // cols, flat % cols)
    cells = {f: (r, c) for f, r, c in qa.evidence}
    frames = [qa.frame] if qa.frame is not None else list(range(time))
    cell_hits = []
    for f in frames:
        peak = int(np.argmax(values[f]))
        track_cell = cells.get(f, qa.evidence[0][1:])  # a still object's cell is the same in every frame
        cell_hits.append(divmod(peak, cols) == track_cell)
    return {
        "joint": top in set(qa.evidence),
        "cell": all(cell_hits),
        "frame": (top[0] == qa.frame) if qa.decisive else None,
    }


@dataclass(frozen=True, kw_only=True)
class VideoPointingResult:
    """Pointing accuracies of per-frame maps.

    Attributes:
        scores: method -> score (``joint``, ``cell``, ``frame``; see :func:`point`) -> question group
            (``all``, each qtype, ``first/last, moving``) -> accuracy.
        chance: score -> group -> expected accuracy of a uniformly random peak (``joint``: evidence cells
            over all cells; ``cell``: 1/9 per frame asked; ``frame``: 1/frames); ``object`` -> group ->
            a random object of the clip (cell score).
        counts: group -> questions (the ``frame`` score counts only decisive questions).
        model_accuracy: how often the model's next token is the answer's first token.
    """

    scores: dict[str, dict[str, dict[str, float]]]
    chance: dict[str, dict[str, float]]
    counts: dict[str, int]
    model_accuracy: float

    def table(self) -> str:
        """A markdown table: one row per method and score, columns per question group."""
        groups = list(self.counts)
        lines = ["| method | score | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        for name, scores in [*self.scores.items(), ("chance", self.chance)]:
            for score, per in scores.items():
                cells = " | ".join(f"{per[g]:.2f}" if g in per else "" for g in groups)
                if name == "chance":
                    label = "chance: random object" if score == "object" else "chance: random peak"
                    score = "cell" if score == "object" else score
                else:
                    label = name
                lines.append(f"| {label} | {score} | {cells} |")
        return "\n".join(lines)


def _groups(qa: VideoQA, clip: Clip) -> list[str]:
    out = ["all", qa.qtype]
    if qa.qtype != "moved" and qa.track == clip.mover:
        out.append("first/last, moving")
    return out


def video_pointing(
    model: Any,
    clips: Sequence[Clip],
    *,
    methods: Sequence[str] = VIDEO_METHODS,
    qtypes: Sequence[str] = VIDEO_QTYPES,
    batch_size: int = 16,
) -> VideoPointingResult:
    """Play the pointing game on video: one map per frame for each question, scored by :func:`point`.

    Args:
        model: a :class:`~hooked_mllm.HookedMLLM` that speaks the video world (``toy-video``).
        clips: clips of a world seed never used in training.
        methods: names of :data:`hooked_mllm.toy.pointing.METHODS`.
        qtypes: question types played.

    Examples:
        >>> clips = VideoWorld(seed=7).sample(30)
        >>> res = video_pointing(model, clips, methods=["attention"])  # doctest: +SKIP
        >>> print(res.table())                                          # doctest: +SKIP
    """
    from hooked_mllm.mechanism.capture import capture
    from hooked_mllm.toy.pointing import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown pointing methods {unknown}; known: {list(METHODS)}.")
    items = _items(clips, qtypes)
    if not items:
        raise ValueError("No question of these types among these clips.")
    tokenizer = model.processor.tokenizer
    hits: dict[str, dict[str, dict[str, list[bool]]]] = {m: {} for m in methods}
    chance: dict[str, dict[str, list[float]]] = {"joint": {}, "cell": {}, "frame": {}, "object": {}}
    counts: dict[str, int] = {}
    correct: list[bool] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = model.prepare(
            videos=[list(c.frames) for c, _ in chunk], prompts=[qa.question for _, qa in chunk]
        )
        frames = batch.frames_as_images()
        run = capture(model, frames)
        answers = [tokenizer.encode(qa.answer, add_special_tokens=False)[0] for _, qa in chunk]
        correct += [int(t) == a for t, a in zip(run.target.tolist(), answers)]
        time = batch.videos[0].time
        for name in methods:
            per_frame = [METHODS[name](model, run, image=t) for t in range(time)]
            for row, (clip, qa) in enumerate(chunk):
                values = np.stack([np.asarray(per_frame[t][row].values, dtype=float) for t in range(time)])
                for score, hit in point(values, qa).items():
                    if hit is None:
                        continue
                    for g in _groups(qa, clip):
                        hits[name].setdefault(score, {}).setdefault(g, []).append(hit)
        for clip, qa in chunk:
            n_frames = len(clip.frames)
            asked = 1 if qa.frame is not None else n_frames
            for g in _groups(qa, clip):
                counts[g] = counts.get(g, 0) + 1
                chance["joint"].setdefault(g, []).append(len(qa.evidence) / (n_frames * GRID**2))
                chance["cell"].setdefault(g, []).append((1 / GRID**2) ** asked)
                chance["object"].setdefault(g, []).append((1 / len(clip.tracks)) ** asked)
                if qa.decisive:
                    chance["frame"].setdefault(g, []).append(1 / n_frames)
    return VideoPointingResult(
        scores={
            m: {s: {g: float(np.mean(v)) for g, v in per.items()} for s, per in hits[m].items()}
            for m in methods
        },
        chance={s: {g: float(np.mean(v)) for g, v in per.items()} for s, per in chance.items()},
        counts=counts,
        model_accuracy=float(np.mean(correct)),
    )


@dataclass(frozen=True, kw_only=True)
class FramePatchingResult:
    """Activation patching over frames, averaged over questions.

    Attributes:
        restored: qtype -> ``[layer, time]`` mean normalised metric (1 = the patched frame alone restores
            the clean answer, 0 = no effect).
        named_frame_wins: qtype -> fraction of questions where, at the first patched layer (layer 0's input
            by default), the named frame restores more than every other frame.
        counts: qtype -> questions used (the model answers the clean and the backwards clip differently).
        layers: the layers of dim 0.
    """

    restored: dict[str, torch.Tensor]
    named_frame_wins: dict[str, float]
    counts: dict[str, int]
    layers: list[int]

    def table(self) -> str:
        """Mean restoration per layer and frame, one block per qtype."""
        lines = []
        for qtype, values in self.restored.items():
            frames = values.shape[1]
            wins = self.named_frame_wins[qtype]
            lines.append(f"{qtype} ({self.counts[qtype]} questions; named frame wins {wins:.2f})")
            lines.append("| layer | " + " | ".join(f"t{t}" for t in range(frames)) + " |")
            lines.append("|---|" + "---|" * frames)
            for li, layer in enumerate(self.layers):
                lines.append(f"| {layer} | " + " | ".join(f"{float(v):.2f}" for v in values[li]) + " |")
        return "\n".join(lines)


def frame_patching(
    model: Any,
    clips: Sequence[Clip],
    *,
    qtypes: Sequence[str] = ("first", "last"),
    layers: Sequence[int] | None = None,
    hook: str = "resid_pre",
    min_gap: float = 1.0,
) -> FramePatchingResult:
    """Patch each frame of a clip into the same clip played backwards, for the moving object's questions.

    Playing the clip backwards swaps the moving object's first and last cells and keeps everything else,
    so the metric ``logit[clean answer] - logit[backwards answer]`` should come back when the frame the
    question names is patched, and not otherwise. Questions whose clean and corrupted metrics differ by
    less than ``min_gap`` are skipped (nothing to restore).

    Examples:
        >>> result = frame_patching(model, VideoWorld(seed=9).sample(20))   # doctest: +SKIP
        >>> print(result.table())                                          # doctest: +SKIP
    """
    from hooked_mllm.patching import activation_patching, logit_diff

    bad = sorted(set(qtypes) - {"first", "last"})
    if bad:
        raise ValueError(
            f"frame_patching plays 'first' and 'last' questions (one frame shows them), not {bad}."
        )
    tok = model.processor.tokenizer
    tables: dict[str, list[torch.Tensor]] = {q: [] for q in qtypes}
    wins: dict[str, list[bool]] = {q: [] for q in qtypes}
    used_layers: list[int] = []
    for clip in clips:
        backwards = list(clip.frames)[::-1]
        mover = clip.tracks[clip.mover]
        for qa in clip.questions:
            if qa.qtype not in qtypes or qa.track != clip.mover:
                continue
            other = mover.position(len(clip.frames) - 1 - (qa.frame or 0))
            good, bad_id = tok.convert_tokens_to_ids([qa.answer, other])
            clean = model.prepare(videos=[list(clip.frames)], prompts=[qa.question])
            corrupted = model.prepare(videos=[backwards], prompts=[qa.question])
            result = activation_patching(
                model, clean, corrupted, logit_diff(good, bad_id), hook=hook, layers=layers, over="frame"
            )
            if result.clean_metric - result.corrupted_metric < min_gap:
                continue
            used_layers = result.layers
            restored = result.normalized()
            tables[qa.qtype].append(restored)
            first = restored[0]
            named = qa.frame if qa.frame is not None else 0
            wins[qa.qtype].append(bool(all(first[named] > first[t] for t in range(len(first)) if t != named)))
    kept = [q for q in qtypes if tables[q]]
    return FramePatchingResult(
        restored={q: torch.stack(tables[q]).mean(0) for q in kept},
        named_frame_wins={q: float(np.mean(wins[q])) for q in kept},
        counts={q: len(tables[q]) for q in kept},
        layers=used_layers,
    )
