"""``output.export: [ctranslate2]``: the fine-tuned model converted for faster-whisper / CTranslate2, and
checked by WER against the transformers model on the same eval clips.

After training the writer converts ``output.dir/model`` with CTranslate2's ``TransformersConverter`` into
``output.dir/model-ct2`` (with ``tokenizer.json`` and ``preprocessor_config.json``, what faster-whisper
loads), then scores both engines on every eval clip, one after the other, greedy, with the same prompt
(start of transcript, language, task, no timestamps), the same log-mel features and the same maximum
length, and reports both WERs and both speeds (utterances/s): in an ``export`` event, in metrics.json
(``export.ctranslate2``), in the end event's metrics (``ct2_wer`` ... for ``status``) and in the card.
An export worse than the model by more than ``max_wer_gap`` WER points fails the job with both numbers
(:class:`ExportError`); a better one does not (a model trained and scored under bf16 autocast, exported in
float32, can score a little better).

:func:`ct2_transcripts` is also what ``kind: evaluate`` runs on a CTranslate2 model directory
(:func:`is_ct2_dir`, or ``model.engine: ctranslate2``). The transcript is decoded as faster-whisper does:
``tokenizer.json`` of the model folder, text tokens only (ids below end-of-text).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec
    from gpujob.spec.serving import ExportTarget

CT2_FILES = ("tokenizer.json", "preprocessor_config.json")
CT2_DIR = "model-ct2"


class ExportError(Exception):
    """The export scores worse than the model it was made from (or could not be made)."""


def is_ct2_dir(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / "model.bin").is_file() and (folder / "config.json").is_file()


def convert(model_dir: Path, dest: Path, quantization: str | None) -> Path:
    """``model_dir`` (a transformers Whisper) as a CTranslate2 model in ``dest`` (replaced whole)."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise ExportError("output.export: ctranslate2 needs the ctranslate2 package in the job image "
                          "(pip install 'gpujob[export]')") from None
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    files = [name for name in CT2_FILES if (model_dir / name).is_file()]
    TransformersConverter(str(model_dir), copy_files=files, load_as_float16=False).convert(
        str(tmp), quantization=quantization if quantization not in (None, "float32") else None, force=True)
    _serving_files(model_dir, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _serving_files(model_dir: Path, folder: Path) -> None:
    """tokenizer.json and preprocessor_config.json beside model.bin, as faster-whisper reads them, where the
    model folder holds them only inside processor_config.json (transformers 5 saves processors so)."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    if not (folder / "preprocessor_config.json").is_file():
        WhisperFeatureExtractor.from_pretrained(str(model_dir)).to_json_file(str(folder / "preprocessor_config.json"))
    if not (folder / "tokenizer.json").is_file():
        WhisperTokenizerFast.from_pretrained(str(model_dir)).backend_tokenizer.save(str(folder / "tokenizer.json"))


def load_ct2(folder: Path, device: str, threads: int = 0):
    import ctranslate2

    return ctranslate2.models.Whisper(str(folder), device=device, compute_type="default", intra_threads=threads)


def ct2_transcripts(folder: Path, examples: Iterable[dict], *, spec: JobSpec, device: str, batch_size: int,
                    model=None) -> list[tuple[int, str, str, str, str]]:
    """``(n, reference, transcript, id, source name)`` per example, transcribed by the CTranslate2 model in
    ``folder`` (see :func:`gpujob.runner.evaluate.transcripts`)."""
    import ctranslate2
    import numpy as np
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    from gpujob.runner.card_body import language_code

    model = model or load_ct2(folder, device)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    extractor = WhisperFeatureExtractor.from_pretrained(str(folder))
    eot = tokenizer.token_to_id("<|endoftext|>")
    task = tokenizer.token_to_id(f"<|{spec.model.task}|>")
    lang = language_code(spec.model.language)
    head = [tokenizer.token_to_id("<|startoftranscript|>")]
    tail = [task, tokenizer.token_to_id("<|notimestamps|>")]
    max_length = min(spec.training.generation_max_length, 448)
    rows: list[tuple[int, str, str, str, str]] = []
    batch: list[tuple] = []

    def flush() -> None:
        feats = extractor([b[0] for b in batch], sampling_rate=16000, return_tensors="np").input_features
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32))
        if lang:
            prompts = [head + [tokenizer.token_to_id(f"<|{lang}|>")] + tail] * len(batch)
        else:
            found = model.detect_language(view)
            prompts = [head + [tokenizer.token_to_id(best[0][0])] + tail for best in found]
        results = model.generate(view, prompts, beam_size=1, max_length=max_length, suppress_blank=True)
        for (_, n, ref, id_, src), result in zip(batch, results):
            ids = [t for t in result.sequences_ids[0] if t < eot]
            rows.append((n, ref, tokenizer.decode(ids).strip(), id_, src))
        batch.clear()

    for position, example in enumerate(examples):
        batch.append((example["audio"], example.get("n", position), example["text"], str(example.get("id", position)),
                      example.get("source_name", "")))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return rows


def score_rows(rows, spec: JobSpec):
    from gpujob.runner.metrics import score_sources
    from gpujob.spec.tracking import source_names

    return score_sources([r[1] for r in rows], [r[2] for r in rows], [r[4] for r in rows],
                         names=source_names(spec.data.eval), normalize=spec.evaluation.normalizer,
                         ids=[r[3] for r in rows])


def export_ctranslate2(target: ExportTarget, model_dir: Path, out_dir: Path, *, spec: JobSpec,
                       examples: list[dict], batch_size: int) -> dict[str, Any]:
    """Convert ``model_dir``, score both engines on ``examples``; the numbers, or :class:`ExportError`."""
    import torch

    from gpujob.runner.evaluate import evaluate
    from gpujob.runner.model import load, pick_device, pick_precision

    dest = convert(model_dir, out_dir / CT2_DIR, target.quantization)
    device = pick_device()
    precision = pick_precision(spec.training.precision, device)
    local = spec.model_copy(update={"model": spec.model.model_copy(update={"checkpoint": str(model_dir)})})
    model, processor = load(local, device, for_training=False)
    t0 = time.perf_counter()
    hf = evaluate(model, processor, examples, spec=local, device=device, precision=precision, batch_size=batch_size)
    hf_time = time.perf_counter() - t0
    del model
    ct2_model = load_ct2(dest, device.type, threads=torch.get_num_threads())
    t0 = time.perf_counter()
    ct2 = score_rows(ct2_transcripts(dest, examples, spec=spec, device=device.type, batch_size=batch_size,
                                     model=ct2_model), spec)
    ct2_time = time.perf_counter() - t0
    n = len(examples)
    result = {"dir": str(dest), "quantization": target.quantization or "float32", "compute_type": ct2_model.compute_type,
              "device": _device_name(device), "transformers_precision": precision.name, "utterances": n, "wer": ct2.wer, "cer": ct2.cer,
              "transformers_wer": hf.wer, "transformers_cer": hf.cer, "max_wer_gap": target.max_wer_gap,
              "wer_gap": (ct2.wer - hf.wer) if ct2.wer is not None and hf.wer is not None else None,
              "utterances_per_s": round(n / max(ct2_time, 1e-9), 3),
              "transformers_utterances_per_s": round(n / max(hf_time, 1e-9), 3),
              "same_transcripts": sum(a["prediction"] == b["prediction"]
                                      for a, b in zip(hf.per_utterance, ct2.per_utterance))}
    (dest / "gpujob_export.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def gap_problem(result: dict[str, Any]) -> str | None:
    """The message for a WER gap above ``max_wer_gap`` points; None where within."""
    hf, ct2 = result["transformers_wer"], result["wer"]
    if hf is None or ct2 is None:
        return None
    gap = (ct2 - hf) * 100  # only worse counts: an fp32 export of a model scored under bf16 may score better
    if gap <= result["max_wer_gap"] + 1e-9:
        return None
    return (f"output.export ctranslate2: the export's WER is {ct2 * 100:.2f}% against {hf * 100:.2f}% for the "
            f"transformers model on the same {result['utterances']} clips, a gap of {gap:.2f} points, more than "
            f"max_wer_gap ({result['max_wer_gap']:g}); the export is in {result['dir']} for inspection. Check the "
            "tokenizer and preprocessor files beside model.bin, or a lighter quantization")


def run_exports(spec: JobSpec, out_dir: Path, writer, metrics: dict[str, Any], *, examples: list[dict],
                batch_size: int) -> None:
    """Every ``output.export`` target: numbers into ``metrics`` and the events; ExportError on a gap."""
    for target in spec.output.export:
        print(f"export: converting model/ to CTranslate2 ({target.quantization or 'float32'}) and scoring both "
              f"engines on {len(examples)} eval clips", flush=True)
        try:
            result = export_ctranslate2(target, out_dir / "model", out_dir, spec=spec, examples=examples,
                                        batch_size=batch_size)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - the converter's or the engine's failure, in words
            raise ExportError(f"output.export ctranslate2: the conversion or its evaluation failed: "
                              f"{type(exc).__name__}: {exc}") from None
        metrics.setdefault("export", {})[target.engine] = result
        writer.emit("export", engine=target.engine, **{k: v for k, v in result.items() if k != "dir"})
        print(f"export ctranslate2: WER {_pct(result['wer'])} (transformers {_pct(result['transformers_wer'])}); "
              f"{result['utterances_per_s']} utt/s (transformers {result['transformers_utterances_per_s']}) on "
              f"{result['device']}; {result['same_transcripts']}/{result['utterances']} transcripts identical",
              flush=True)
        if (problem := gap_problem(result)) is not None:
            raise ExportError(problem)
        writer.artifact(path=result["dir"], name="model-ct2")


def after_training(spec: JobSpec, out_dir: Path, writer, metrics: dict[str, Any], eval_examples: list, group,
                   workers: int, batch: int) -> str | None:
    """``output.export`` at the end of a train job, on the writer, over every eval clip (re-read where
    this process held only its share); the failure's message, or None."""
    from gpujob.runner import data as data_mod

    examples = eval_examples if not group.many else list(data_mod.iter_examples(
        spec.data.eval, streaming=spec.data.streaming, seed=spec.training.seed, key="data.eval", workers=workers))
    try:
        run_exports(spec, out_dir, writer, metrics, examples=examples, batch_size=batch or 16)
    except ExportError as exc:
        return str(exc)
    return None


def _pct(value: float | None) -> str:
    return f"{value * 100:.2f}%" if value is not None else "–"
