"""``kind: evaluate`` on a CTranslate2 model directory (``model.bin`` beside ``config.json``, as
``output.export: [ctranslate2]`` or ct2-transformers-converter write it): detected, or asked for with
``model.engine: ctranslate2``. Scored as the transformers engine is (the same metrics.json, predictions,
events), so ``gpujob compare`` puts the two engines side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


def wanted(spec: JobSpec) -> bool:
    from gpujob.runner.export import is_ct2_dir

    engine = getattr(spec.model, "engine", "auto")
    return engine == "ctranslate2" or (engine == "auto" and is_ct2_dir(spec.model.checkpoint))


def run(spec: JobSpec, out_dir: Path, writer, group) -> int:
    """The whole set on the writer (CTranslate2 uses the process's cores or GPU itself); other processes
    have nothing to do."""
    import torch

    from gpujob.runner import data as data_mod
    from gpujob.runner.evaluate import write_results
    from gpujob.runner.export import ct2_transcripts, is_ct2_dir, load_ct2, score_rows

    if not group.is_writer:
        return 0
    folder = Path(spec.model.checkpoint)
    if not is_ct2_dir(folder):
        raise data_mod.DataError(f"{folder} is not a CTranslate2 model directory (model.bin and config.json); "
                                 "set model.engine: transformers for a transformers checkpoint", key="model.checkpoint")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_ct2(folder, device, threads=torch.get_num_threads())
    batch = 16 if spec.evaluation.batch_size == "auto" else int(spec.evaluation.batch_size)
    print(f"evaluation: CTranslate2 ({model.compute_type}) on {device}; batches of {batch}", flush=True)
    examples = data_mod.iter_examples(spec.data.eval, streaming=spec.data.streaming, seed=spec.training.seed,
                                      key="data.eval", workers=data_mod.loader_threads(spec.data.loader_workers))
    writer.start(kind="evaluate", name=spec.name)
    t0 = time.perf_counter()
    scores = score_rows(ct2_transcripts(folder, examples, spec=spec, device=device, batch_size=batch, model=model), spec)
    return write_results(spec, out_dir, writer, scores, time.perf_counter() - t0, engine="ctranslate2")
