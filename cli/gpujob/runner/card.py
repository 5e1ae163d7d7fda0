"""The model card (README.md with model-index metadata) and the optional push to the Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpujob.runner.model import language_name
from gpujob.spec.tracking import source_names

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


def _result(spec: JobSpec, source, scores: dict[str, Any]) -> list[str]:
    """One model-index result: the task, the dataset it was scored on, and its WER/CER in percent."""
    lines = ["  - task:", "      type: automatic-speech-recognition", "      name: Automatic Speech Recognition"]
    if source is not None:
        lines += ["    dataset:", f"      name: {source.dataset}", f"      type: {source.dataset}"]
        if source.config:
            lines.append(f"      config: {source.config}")
        lines.append(f"      split: {source.split}")
    metrics = [f"          - type: {key}\n            value: {scores[key] * 100:.2f}\n            name: {name}"
               for key, name in (("wer", "Wer"), ("cer", "Cer")) if scores.get(key) is not None]
    if metrics:
        lines += ["    metrics:", *metrics]
    return lines


def model_card(spec: JobSpec, metrics: dict[str, Any]) -> str:
    """The card's text. With several eval sources, model-index holds one result per dataset, scored
    on that source alone (``metrics["sources"]``); with one, the overall scores."""
    datasets = sorted({s.dataset for s in [*spec.data.train, *spec.data.eval] if "/" in s.dataset
                       and not s.dataset.startswith((".", "/"))})
    lang = spec.model.language or ""
    per_source = metrics.get("sources") or {}
    if per_source:
        results = [line for name, source in zip(source_names(spec.data.eval), spec.data.eval)
                   if name in per_source for line in _result(spec, source, per_source[name])]
    else:
        results = _result(spec, spec.data.eval[0] if spec.data.eval else None, metrics)
    lines = ["---", f"base_model: {spec.model.checkpoint}", "library_name: transformers", "license: apache-2.0"]
    if lang:
        lines.append(f"language:\n- {lang}")
    if datasets:
        lines.append("datasets:\n" + "\n".join(f"- {d}" for d in datasets))
    lines += ["tags:\n- whisper\n- automatic-speech-recognition\n- gpujob", "model-index:",
              f"- name: {spec.name}", "  results:", *results]
    lines.append("---")
    body = [
        "", f"# {spec.name}", "",
        f"{spec.model.checkpoint} fine-tuned for {language_name(lang) or 'speech'} {spec.model.task} with gpujob.",
        "", "## Results", "",
    ]
    for key in ("wer", "cer", "baseline_wer", "baseline_cer"):
        if metrics.get(key) is not None:
            body.append(f"- {key}: {metrics[key] * 100:.2f}%")
    for name, scores in per_source.items():
        body.append(f"- {name}: " + ", ".join(f"{k} {scores[k] * 100:.2f}%" for k in ("wer", "cer")
                                              if scores.get(k) is not None) + f" ({scores.get('utterances')} utterances)")
    t = spec.training
    body += ["", "## Training", "",
             f"- steps: {metrics.get('steps')}; learning rate: {t.learning_rate} ({t.lr_schedule}, "
             f"{t.warmup_steps} warmup); batch {t.per_device_batch_size} x {t.gradient_accumulation_steps}",
             f"- freeze: {t.freeze}; dropout: {t.dropout}; precision: {t.precision}",
             "- data: " + ", ".join(f"{s.dataset} ({s.split})" for s in spec.data.train), ""]
    return "\n".join(lines + body)


def write_model_card(model_dir: Path, spec: JobSpec, metrics: dict[str, Any]) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "README.md"
    path.write_text(model_card(spec, metrics), encoding="utf-8")
    return path


def push_to_hub(model_dir: Path, repo: str, *, private: bool) -> str:
    """Upload the model folder with the token from the HF_TOKEN secret (never written anywhere)."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise RuntimeError("output.hub_repo is set but HF_TOKEN is not: add HF_TOKEN to runtime.secrets")
    api = HfApi(token=token)
    api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(model_dir), repo_id=repo, commit_message="gpujob: fine-tuned model")
    return f"https://huggingface.co/{repo}"
