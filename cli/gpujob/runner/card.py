"""The model card (README.md) written with huggingface_hub's ``ModelCard``/``ModelCardData``/``EvalResult``,
and the optional push to the Hub.

The card's metadata is what the Hub's widgets and leaderboards read:

- ``base_model``: the Hub id the fine-tune started from: ``model.checkpoint`` when it is a Hub id, else
  the id recorded in the local checkpoint's config (``gpujob_base_model``, which gpujob writes into every
  model it saves, ``base_model_name_or_path`` in a LoRA adapter's config, or ``_name_or_path`` when that is
  a Hub id); never a local path (omitted where unknown).
- ``license``: the base model's own card's licence (its README.md, in the checkpoint folder or the Hub
  cache); omitted, with a note in the body, where that card is not at hand.
- ``eval_results``: one ``EvalResult`` per metric and eval source (task automatic-speech-recognition,
  the dataset's id/config/split, WER and CER in percent), equal to metrics.json's scores × 100.

The body: results per source (and the CTranslate2 export's beside them), the training settings, the curves
(``curves.png``, :mod:`.card_curves`), the worst utterances, and how to load the model with transformers
and faster-whisper.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpujob.reach import hub_endpoint, hub_offline_set, unreachable
from gpujob.runner.card_body import language_code
from gpujob.spec.tracking import source_names

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TAGS = ["whisper", "automatic-speech-recognition", "gpujob"]
BASE_MODEL_KEY = "gpujob_base_model"  # the Hub id a checkpoint descends from, kept in its config.json


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and HUB_ID.match(name) is not None and not name.startswith((".", "/", "~"))


def base_model_id(checkpoint: str) -> str | None:
    """The Hub id of the model ``checkpoint`` is (a Hub id) or descends from (a local folder whose config
    records one); None where unknown. Never a local path."""
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        return checkpoint if _is_hub_id(checkpoint) else None
    for name in ("config.json", "adapter_config.json"):
        try:
            config = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        for key in (BASE_MODEL_KEY, "_name_or_path", "base_model_name_or_path"):
            if _is_hub_id(config.get(key)) and not Path(config[key]).exists():
                return config[key]
    return None


def base_card_license(checkpoint: str) -> str | None:
    """The ``license`` of the checkpoint's own card: README.md in its folder, or in the Hub cache (fetched
    when the Hub is reachable); None where there is no card at hand."""
    from huggingface_hub import ModelCard

    folder = Path(checkpoint).expanduser()
    readme: Path | None = folder / "README.md" if folder.is_dir() else None
    if readme is None and _is_hub_id(checkpoint):
        readme = _hub_readme(checkpoint)
    if readme is None or not readme.is_file():
        return None
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.license or None
    except Exception:  # noqa: BLE001 - an unreadable card only leaves the licence out
        return None


def _hub_readme(repo: str) -> Path | None:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "README.md")
    if isinstance(cached, str):
        return Path(cached)
    if hub_offline_set() or unreachable(hub_endpoint()):
        return None  # at once: offline, the Hub's client would retry for half a minute, printing each try
    try:
        return Path(hf_hub_download(repo, "README.md"))
    except Exception:  # noqa: BLE001 - offline, gated, no card: the licence is left out
        return None


def _dataset(source, name: str) -> tuple[str, str]:
    """(type, name) of an eval source for the card: its Hub id, or its source name for a local folder."""
    return (source.dataset, source.dataset) if _is_hub_id(source.dataset) and not Path(source.dataset).exists() \
        else (name, name)


def eval_results(spec: JobSpec, metrics: dict[str, Any]):
    """One ``EvalResult`` per metric per eval source (percent); the overall scores with one source."""
    from huggingface_hub import EvalResult

    per_source = metrics.get("sources") or {}
    names = source_names(spec.data.eval)
    pairs = [(s, n, per_source[n]) for s, n in zip(spec.data.eval, names) if n in per_source] if per_source else \
        [(spec.data.eval[0], names[0], metrics)] if spec.data.eval else []
    results = []
    for source, name, scores in pairs:
        dtype, dname = _dataset(source, name)
        for key, label in (("wer", "WER"), ("cer", "CER")):
            if scores.get(key) is None:
                continue
            results.append(EvalResult(
                task_type="automatic-speech-recognition", task_name="Automatic Speech Recognition",
                dataset_type=dtype, dataset_name=dname, dataset_config=source.config, dataset_split=source.split,
                dataset_revision=getattr(source, "revision", None), metric_type=key, metric_name=label,
                metric_value=round(scores[key] * 100, 4)))
    return results


def card_data(spec: JobSpec, metrics: dict[str, Any], *, base: str | None, license: str | None):
    from huggingface_hub import ModelCardData

    datasets = sorted({s.dataset for s in [*spec.data.train, *spec.data.eval] if _is_hub_id(s.dataset)
                       and not Path(s.dataset).exists()})
    lang = language_code(spec.model.language)
    results = eval_results(spec, metrics)
    return ModelCardData(
        base_model=base, license=license, language=[lang] if lang else None, datasets=datasets or None,
        tags=list(TAGS), library_name="transformers", pipeline_tag="automatic-speech-recognition",
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=spec.name if results else None, eval_results=results or None)


def model_card(spec: JobSpec, metrics: dict[str, Any], *, base: str | None = ..., license: str | None = ...,
               worst_rows: list[dict] | None = None, curves: str | None = None, repo: str | None = None) -> str:
    """The card's text (YAML metadata and body). ``base``/``license`` default to what the checkpoint says."""
    from huggingface_hub import ModelCard

    from gpujob.runner.card_body import body

    checkpoint = spec.model.checkpoint
    base = base_model_id(checkpoint) if base is ... else base
    license = base_card_license(checkpoint) if license is ... else license
    data = card_data(spec, metrics, base=base, license=license)
    text = body(spec, metrics, base=base, license=license, worst_rows=worst_rows or [], curves=curves, repo=repo)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{text}"))


def write_model_card(model_dir: Path, spec: JobSpec, metrics: dict[str, Any], *, worst_rows: list[dict] | None = None,
                     history: list[dict] | None = None) -> Path:
    """README.md (and curves.png where matplotlib is installed and there is a history) in ``model_dir``."""
    from gpujob.runner.card_curves import draw

    model_dir.mkdir(parents=True, exist_ok=True)
    curves = draw(history or [], model_dir / "curves.png")
    path = model_dir / "README.md"
    output = getattr(spec, "output", None)
    path.write_text(model_card(spec, metrics, worst_rows=worst_rows, curves=curves,
                               repo=getattr(output, "hub_repo", None)), encoding="utf-8")
    return path


def push_to_hub(model_dir: Path, repo: str, *, private: bool, extra: dict[str, Path] | None = None) -> str:
    """Upload the model folder (and each ``extra`` folder under its name in the repo, e.g. the CTranslate2
    export under ``ctranslate2/``) with the token from the HF_TOKEN secret (never written anywhere)."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise RuntimeError("output.hub_repo is set but HF_TOKEN is not: add HF_TOKEN to runtime.secrets")
    api = HfApi(token=token)
    api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(model_dir), repo_id=repo, commit_message="gpujob: fine-tuned model")
    for name, folder in (extra or {}).items():
        api.upload_folder(folder_path=str(folder), repo_id=repo, path_in_repo=name,
                          commit_message=f"gpujob: {name} export")
    return f"https://huggingface.co/{repo}"
