"""A tiny random Whisper with the real Whisper base tokenizer, processor and generation config: what
the runner's unit tests train in seconds.

    python -m gpujob_dev.convert_ct2 --out DIR --tiny TINY_DIR
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .convert_ct2 import PROCESSOR_FILES, ensure_whisper_base, special_tokens

__all__ = ["tiny_whisper"]


def tiny_whisper(out_dir: Path, seed: int = 0, base_dir: Path | None = None) -> Path:
    """A tiny random WhisperForConditionalGeneration with the real base tokenizer/processor.

    d_model 64, 2+2 layers, 4 heads, ffn 128, 80 mels, 1500/448 positions, the
    full 51865-token vocabulary; generation config copied from Whisper base
    (language/task prefixes work) with alignment heads fitted to the tiny
    decoder.  ``base_dir`` defaults to :func:`ensure_whisper_base`.
    """
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    base = Path(base_dir) if base_dir is not None else ensure_whisper_base()
    base_cfg = WhisperConfig.from_pretrained(base)
    gen = GenerationConfig.from_pretrained(base)
    config = WhisperConfig(
        vocab_size=base_cfg.vocab_size,
        num_mel_bins=base_cfg.num_mel_bins,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        **special_tokens(base_cfg),
        tie_word_embeddings=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    gen.alignment_heads = [[layer, head] for layer in range(1, 2) for head in range(4)]
    gen.max_length = config.max_target_positions
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = gen
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    gen.save_pretrained(out_dir)
    for name in PROCESSOR_FILES:  # the real tokenizer/processor, byte for byte
        if (base / name).is_file():
            shutil.copyfile(base / name, out_dir / name)
    return out_dir
