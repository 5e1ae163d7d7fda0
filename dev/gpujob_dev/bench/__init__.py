"""Throughput of the Whisper runner: the data loader on the CPU, the training and evaluation steps on one GPU.

    python -m gpujob_dev.bench [--part cpu|gpu|all] [--model small,medium] [--device cuda]
                               [--batch N] [--steps N] [--warmup N] [--recipes a,b] [--json PATH] [--quick]

CPU part (runs anywhere): real speech synthesized by libespeak-ng (Greek voice; a speech-like numpy signal where
it is missing), encoded as WAV/FLAC/MP3 at 16, 44.1 and 48 kHz, then per core (one thread): decoding with
the runner's ``audio.decode``, resampling with ``audio.to_mono_16k``, log-mel with ``WhisperFeatureExtractor`` and
with the runner's ``batches.features``; then whether the loader can keep up with the target training rates.

GPU part (``torch.cuda.is_available()``, or ``--device cpu`` for a smoke test): Whisper models built by hand from
``WhisperConfig`` (no Hub download), random weights, one training step (forward + backward + AdamW) timed per
recipe: the 2022 event recipe beside SDPA/bf16/checkpointing/compile/frozen-encoder variants and the runner's own
set-up (``gpujob*`` rows, through ``gpujob.runner.model`` and ``gpujob.runner.update.mean_loss``); model FLOPs
counted with ``torch.utils.flop_counter.FlopCounterMode``, MFU against 790 TFLOP/s; then evaluation (greedy
generation of 40 new tokens) through the runner's ``evaluate.transcribe``. See docs/performance.md.

Modules: ``common`` (recipes, targets, report helpers), ``speech`` (the clips), ``loading`` (the CPU part),
``models`` (Whisper built by hand, FLOPs), ``training`` and ``evaluation`` (the GPU part), ``run`` (arguments,
the run, the summary, the JSON).
"""
