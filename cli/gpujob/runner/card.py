"""The model card (README.md with model-index metadata) and the optional push to the Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpujob.runner.model import language_name

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


def model_card(spec: JobSpec, metrics: dict[str, Any]) -> str:
    datasets = sorted({s.dataset for s in [*spec.data.train, *spec.data.eval] if "/" in s.dataset
                       and not s.dataset.startswith((".", "/"))})
    eval_src = spec.data.eval[0] if spec.data.eval else None
    lang = spec.model.language or ""
    results = []
    for key, name in (("wer", "Wer"), ("cer", "Cer")):
        if metrics.get(key) is not None:
            results.append(f"          - type: {key}\n            value: {metrics[key] * 100:.2f}\n"
                           f"            name: {name}")
    lines = ["---", f"base_model: {spec.model.checkpoint}", "library_name: transformers", "license: apache-2.0"]
    if lang:
        lines.append(f"language:\n- {lang}")
    if datasets:
        lines.append("datasets:\n" + "\n".join(f"- {d}" for d in datasets))
    lines += ["tags:\n- whisper\n- automatic-speech-recognition\n- gpujob", "model-index:",
              f"- name: {spec.name}", "  results:", "  - task:", "      type: automatic-speech-recognition",
              "      name: Automatic Speech Recognition"]
    if eval_src is not None:
        lines += ["    dataset:", f"      name: {eval_src.dataset}", f"      type: {eval_src.dataset}"]
        if eval_src.config:
            lines.append(f"      config: {eval_src.config}")
        lines.append(f"      split: {eval_src.split}")
    if results:
        lines += ["    metrics:", *results]
    lines.append("---")
    body = [
        "", f"# {spec.name}", "",
        f"{spec.model.checkpoint} fine-tuned for {language_name(lang) or 'speech'} {spec.model.task} with gpujob.",
        "", "## Results", "",
    ]
    for key in ("wer", "cer", "baseline_wer", "baseline_cer"):
        if metrics.get(key) is not None:
            body.append(f"- {key}: {metrics[key] * 100:.2f}%")
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
