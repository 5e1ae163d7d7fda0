"""Whisper models built by hand from ``WhisperConfig`` (random weights, no Hub download), and their
model FLOPs per training step."""

from __future__ import annotations

import warnings

import torch

from .common import EOT, FIRST_LANG, INPUT_FRAMES, LABEL_TOKENS, MEL_BINS, MODELS, N_LANGS, NO_TIMESTAMPS, SOT, \
    SOT_PREV, TRANSCRIBE, TRANSLATE, free_memory


def whisper_config(size: str, dropout: float = 0.0):
    from transformers import WhisperConfig

    m = MODELS[size]
    config = WhisperConfig(
        vocab_size=51865, num_mel_bins=MEL_BINS, d_model=m["d_model"],
        encoder_layers=m["layers"], decoder_layers=m["layers"],
        encoder_attention_heads=m["heads"], decoder_attention_heads=m["heads"],
        encoder_ffn_dim=m["ffn"], decoder_ffn_dim=m["ffn"],
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=SOT, pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT,
        begin_suppress_tokens=[220, EOT], suppress_tokens=[], activation_function="gelu", scale_embedding=False,
        dropout=dropout, tie_word_embeddings=True, use_cache=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    return config


def generation_config():
    """What a multilingual Whisper checkpoint's generation_config.json holds, by hand."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    langs = list(LANGUAGES)[:N_LANGS]
    return GenerationConfig(
        bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT, decoder_start_token_id=SOT, max_length=448,
        begin_suppress_tokens=[220, EOT], suppress_tokens=[EOT],  # EOT suppressed: every utterance runs full length
        is_multilingual=True, lang_to_id={f"<|{c}|>": FIRST_LANG + i for i, c in enumerate(langs)},
        task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE}, no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=SOT_PREV, max_initial_timestamp_index=50, return_timestamps=False,
    )


def build_model(size: str, attn: str, device: torch.device, seed: int = 0):
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    with warnings.catch_warnings(), torch.device(device):  # initialised where it runs: seconds, not a minute
        warnings.simplefilter("ignore")
        model = WhisperForConditionalGeneration._from_config(whisper_config(size), attn_implementation=attn)
    model.generation_config = generation_config()
    return model.to(device)


def enable_checkpointing(model, reentrant: bool) -> None:
    kwargs = {"use_reentrant": reentrant}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def count_flops(size: str, device: torch.device, frozen: bool) -> float:
    """Model FLOPs of one training step per sample: FlopCounterMode on batch 1, eager attention (counted the same
    on every device), fp32, no checkpointing (recomputation is not model work)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers.modeling_outputs import BaseModelOutput

    model = build_model(size, "eager", device)
    model.train()
    if frozen:
        for p in model.model.encoder.parameters():
            p.requires_grad_(False)
    x = torch.randn(1, MEL_BINS, INPUT_FRAMES, device=device)
    y = torch.randint(0, EOT, (1, LABEL_TOKENS), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        if frozen:
            with torch.no_grad():
                states = model.model.encoder(x).last_hidden_state
            out = model(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=y, use_cache=False)
        else:
            out = model(input_features=x, labels=y, use_cache=False)
        out.loss.backward()
    total = float(counter.get_total_flops())
    del model, out, counter
    free_memory(device)
    return total
