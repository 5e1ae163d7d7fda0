"""WER and CER, the same way in training-time evaluation and in evaluate jobs.

Text is normalised with Whisper's BasicTextNormalizer (lower case, punctuation
and symbols removed, whitespace collapsed; accents kept) unless the spec says
``evaluation.normalizer: none``. Corpus-level rates come from jiwer: total
edits over total reference words (or characters), not a mean of per-utterance
rates. Utterances whose reference is empty after normalisation are left out of
the corpus rates (jiwer cannot score them) and counted.

With several eval sources, each source is scored on its own utterances the same way
(:func:`score_sources`), beside the overall score of all of them: ``wer/<name>`` and ``cer/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


def normalizer(name: str) -> Callable[[str], str]:
    if name == "none":
        return lambda text: text.strip()
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    basic = BasicTextNormalizer()
    return lambda text: " ".join(basic(text).split())


@dataclass
class Scores:
    wer: float | None
    cer: float | None
    words: int
    utterances: int
    skipped_empty: int
    per_utterance: list[dict] = field(default_factory=list)
    sources: dict[str, Scores] = field(default_factory=dict)  # by source name; only with 2+ sources
    loss: float | None = None  # the mean teacher-forced token cross-entropy (``eval_loss``), where computed

    def as_metrics(self, metrics: Sequence[str]) -> dict[str, float]:
        out = {}
        if "wer" in metrics and self.wer is not None:
            out["wer"] = round(self.wer, 6)
        if "cer" in metrics and self.cer is not None:
            out["cer"] = round(self.cer, 6)
        return out

    def event_metrics(self, metrics: Sequence[str]) -> dict[str, float]:
        """The eval event's scores: ``wer``, ``cer`` overall, ``eval_loss``, and ``wer/<name>``, ``cer/<name>`` per
        source."""
        out = self.as_metrics(metrics)
        if self.loss is not None:
            out["eval_loss"] = float(f"{self.loss:.7g}")
        for name, part in self.sources.items():
            out.update({f"{key}/{name}": value for key, value in part.as_metrics(metrics).items()})
        return out

    def sources_metrics(self, metrics: Sequence[str]) -> dict[str, dict]:
        """metrics.json's ``sources``: ``{name: {wer, cer, utterances}}`` (empty with one source)."""
        return {name: {**part.as_metrics(metrics), "utterances": part.utterances}
                for name, part in self.sources.items()}


def score(references: Sequence[str], predictions: Sequence[str], *, normalize: str = "basic",
          ids: Sequence[str] | None = None) -> Scores:
    """Corpus WER/CER plus a per-utterance record (id, reference, prediction, normalised, wer)."""
    import jiwer

    norm = normalizer(normalize)
    refs_n = [norm(r) for r in references]
    hyps_n = [norm(p) for p in predictions]
    ids = list(ids) if ids is not None else [str(i) for i in range(len(references))]
    keep = [i for i, r in enumerate(refs_n) if r]
    per = []
    for i, (ref, hyp, ref_n, hyp_n) in enumerate(zip(references, predictions, refs_n, hyps_n)):
        utt_wer = jiwer.wer(ref_n, hyp_n) if ref_n else None
        per.append({"id": ids[i], "reference": ref, "prediction": hyp, "reference_normalized": ref_n,
                    "prediction_normalized": hyp_n, "wer": utt_wer})
    if not keep:
        return Scores(None, None, 0, len(references), len(references), per)
    r = [refs_n[i] for i in keep]
    h = [hyps_n[i] for i in keep]
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    n_words = words.hits + words.substitutions + words.deletions
    return Scores(words.wer, chars.cer, n_words, len(references), len(references) - len(keep), per)


def score_sources(references: Sequence[str], predictions: Sequence[str], sources: Sequence[str], *,
                  names: Sequence[str], normalize: str = "basic", ids: Sequence[str] | None = None) -> Scores:
    """:func:`score` of everything, with ``sources`` (each utterance's source name) scored apart when
    ``names`` (every source of the spec, in order) has two or more; each per-utterance record gains
    ``source``. A source with no utterances scores None."""
    whole = score(references, predictions, normalize=normalize, ids=ids)
    for utterance, source in zip(whole.per_utterance, sources):
        utterance["source"] = source
    if len(names) > 1:
        for name in names:
            mine = [i for i, s in enumerate(sources) if s == name]
            whole.sources[name] = score([references[i] for i in mine], [predictions[i] for i in mine],
                                        normalize=normalize, ids=[whole.per_utterance[i]["id"] for i in mine])
    return whole


def worst(scores: Scores, n: int = 10) -> list[dict]:
    """The n utterances with the highest WER (ties: longer reference first)."""
    scored = [u for u in scores.per_utterance if u["wer"] is not None]
    scored.sort(key=lambda u: (u["wer"], len(u["reference_normalized"])), reverse=True)
    return scored[:n]
