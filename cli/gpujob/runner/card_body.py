"""The model card's body (Markdown under the metadata, :mod:`.card`): results, the CTranslate2 export beside
them, training settings, curves, the worst utterances and how to load the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpujob.runner.model import language_name

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


def _pct(value: float | None) -> str:
    return f"{value * 100:.2f}" if value is not None else "–"


def _results(metrics: dict[str, Any]) -> list[str]:
    per_source = metrics.get("sources") or {}
    rows = ["| eval source | utterances | WER (%) | CER (%) |", "|---|---:|---:|---:|"]
    for name, s in per_source.items():
        rows.append(f"| {name} | {s.get('utterances', '')} | {_pct(s.get('wer'))} | {_pct(s.get('cer'))} |")
    rows.append(f"| **all** | {metrics.get('utterances', '')} | {_pct(metrics.get('wer'))} | {_pct(metrics.get('cer'))} |")
    if metrics.get("baseline_wer") is not None:
        rows.append(f"| before fine-tuning | | {_pct(metrics.get('baseline_wer'))} | {_pct(metrics.get('baseline_cer'))} |")
    return rows


def _export(metrics: dict[str, Any]) -> list[str]:
    ct2 = (metrics.get("export") or {}).get("ctranslate2")
    if not ct2:
        return []
    speed = lambda v: f"{v:.2f}" if v is not None else "–"  # noqa: E731
    return ["", "### CTranslate2 (faster-whisper)", "",
            f"The model converted to CTranslate2 ({ct2.get('quantization') or 'float32'}), scored on the same clips "
            f"(transformers under {ct2.get('transformers_precision', 'its training precision')}):", "",
            "| engine | WER (%) | CER (%) | utterances/s |", "|---|---:|---:|---:|",
            f"| transformers | {_pct(ct2.get('transformers_wer'))} | {_pct(ct2.get('transformers_cer'))} | "
            f"{speed(ct2.get('transformers_utterances_per_s'))} |",
            f"| CTranslate2 | {_pct(ct2.get('wer'))} | {_pct(ct2.get('cer'))} | {speed(ct2.get('utterances_per_s'))} |",
            "", f"WER gap {ct2.get('wer_gap', 0) * 100:+.2f} points (allowed: {ct2.get('max_wer_gap', 0.5):g})"
            + (f"; measured on {ct2['device']}" if ct2.get("device") else "") + "."]


def _training(spec: JobSpec, metrics: dict[str, Any]) -> list[str]:
    t = spec.training
    lines = ["", "## Training", "", "| setting | value |", "|---|---|",
             f"| steps | {metrics.get('steps')} |", f"| learning rate | {t.learning_rate} ({t.lr_schedule}, "
             f"{t.warmup_steps} warm-up) |",
             f"| batch | {t.per_device_batch_size} per device × {t.gradient_accumulation_steps} accumulation |",
             f"| freeze | {t.freeze} |", f"| dropout | {t.dropout} |", f"| precision | {t.precision} |"]
    lora = getattr(t, "lora", None)
    if lora is not None:
        lines.append(f"| LoRA | r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, "
                     f"modules {', '.join(lora.target_modules)}{'' if lora.merge else ' (adapter only)'} |")
    lines.append("| data | " + ", ".join(f"{s.dataset} ({s.split})" for s in spec.data.train) + " |")
    if metrics.get("best_step") is not None:
        lines.append(f"| best step | {metrics['best_step']} |")
    return lines


def _worst(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["", "## Worst utterances", "", "| id | WER (%) | reference | transcript |", "|---|---:|---|---|"]
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:160]  # noqa: E731
    for u in rows:
        out.append(f"| {cell(u['id'])} | {_pct(u.get('wer'))} | {cell(u.get('reference_normalized', ''))} | "
                   f"{cell(u.get('prediction_normalized', ''))} |")
    return out


def _usage(spec: JobSpec, repo: str | None, metrics: dict[str, Any]) -> list[str]:
    where = repo or "path/to/model"
    lang = language_name(spec.model.language)
    gen = f', generate_kwargs={{"language": "{lang}", "task": "{spec.model.task}"}}' if lang else ""
    lines = ["", "## How to use", "", "With transformers:", "", "```python", "from transformers import pipeline", "",
             f'asr = pipeline("automatic-speech-recognition", model="{where}")',
             f'print(asr("speech.wav"{gen})["text"])', "```"]
    ct2 = (metrics.get("export") or {}).get("ctranslate2")
    lang_arg = f", language=\"{_code(spec)}\"" if _code(spec) else ""
    if ct2:
        fetch = (["from huggingface_hub import snapshot_download", "",
                  f'path = snapshot_download("{repo}", allow_patterns="ctranslate2/*") + "/ctranslate2"']
                 if repo else ['path = "path/to/model-ct2"  # output.dir/model-ct2'])
        lines += ["", "With faster-whisper (the CTranslate2 export):", "", "```python",
                  "from faster_whisper import WhisperModel", *fetch, "",
                  f'model = WhisperModel(path, compute_type="{ct2.get("quantization") or "default"}")',
                  f'segments, _ = model.transcribe("speech.wav"{lang_arg}, task="{spec.model.task}")',
                  'print("".join(s.text for s in segments))', "```"]
    else:
        lines += ["", "With faster-whisper: convert it first (or set `output.export: [ctranslate2]` in the job):", "",
                  "```bash", f"ct2-transformers-converter --model {where} --output_dir model-ct2 "
                  "--copy_files tokenizer.json preprocessor_config.json", "```"]
    return lines


def language_code(language: str | None) -> str | None:
    name = language_name(language)
    if not name:
        return None
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE.get(name)


def _code(spec: JobSpec) -> str | None:
    return language_code(spec.model.language)


def body(spec: JobSpec, metrics: dict[str, Any], *, base: str | None, license: str | None, worst_rows: list[dict],
         curves: str | None, repo: str | None) -> str:
    lang = language_name(spec.model.language)
    start = base or "a local Whisper checkpoint"
    doing = {"transcribe": "transcription", "translate": "translation to English"}.get(spec.model.task, spec.model.task)
    lines = ["", f"# {spec.name}", "",
             f"Whisper: {start} fine-tuned for {lang.capitalize() if lang else 'speech'} {doing} with gpujob.", ""]
    if base is None:
        lines += ["> The base model's Hub id is not known (the job started from a local checkpoint whose config "
                  "records none), so `base_model` is left out.", ""]
    if license is None:
        lines += ["> **Licence:** the base model's card was not at hand when this card was written, so no licence "
                  "is given here: check the base model's licence before sharing this model.", ""]
    lines += ["## Results", "", *_results(metrics), *_export(metrics), *_training(spec, metrics)]
    if curves:
        lines += ["", "## Curves", "", f"![training curves]({curves})"]
    lines += [*_worst(worst_rows), *_usage(spec, repo, metrics), ""]
    return "\n".join(lines)
