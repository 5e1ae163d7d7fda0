"""Speech from libespeak-ng without the ``espeak-ng`` program: the library and its voice data come
from the PyPI package ``espeakng-loader`` (libespeak-ng 1.52), driven here through ctypes.

    speak(text, voice="el", speed=175, pitch=50) -> (int16 samples, sample rate)

gives what ``espeak-ng -v VOICE -s SPEED -p PITCH -w out.wav TEXT`` writes (22050 Hz mono PCM-16),
sample for sample. libespeak-ng keeps its state in globals and is not thread-safe: each process
initialises it once (a forked child again, on its first call), and calls are serialised by a lock.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

INSTALL_HINT = "pip install espeakng-loader==0.2.4 (or: make install)"

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2      # espeak_Synth returns when all audio has gone to the callback
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000                 # a short pause at the end, as the espeak-ng program adds
_RATE, _VOLUME, _PITCH = 1, 2, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_state: dict = {}  # pid -> (library, sample rate, callback, chunk list): one initialisation per process


class EspeakError(RuntimeError):
    """libespeak-ng is missing or refused the text or the voice."""


def _library():
    """The initialised library of this process, its sample rate, and the list its callback fills."""
    pid = os.getpid()
    if _state.get("pid") == pid:
        return _state["lib"], _state["rate"], _state["chunks"]
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakError(f"espeakng-loader is not installed ({INSTALL_HINT})") from None
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    data = espeakng_loader.get_data_path()
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), 0)
    if rate <= 0:
        raise EspeakError(f"libespeak-ng could not start with the voice data at {data}")
    chunks: list[np.ndarray] = []

    def collect(wav, n, _events):
        if wav and n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _CALLBACK(collect)  # kept in _state: ctypes must not free it while the library holds it
    lib.espeak_SetSynthCallback(callback)
    _state.update(pid=pid, lib=lib, rate=rate, chunks=chunks, callback=callback)
    return lib, rate, chunks


def speak(text: str, *, voice: str = "el", speed: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """``text`` spoken by ``voice`` at ``speed`` words a minute and ``pitch`` (0-99): mono int16
    samples and their sample rate (22050 Hz).

    The same text gives the same samples every time: libespeak-ng carries state from one utterance
    to the next (a clip comes out a few samples longer, and different, each time it is repeated in
    one process, and re-initialising does not reset it), so each utterance is spoken in a forked
    child of a process that never loaded the library, as the ``espeak-ng`` program speaks each
    text in a process of its own. Without fork it is spoken here."""
    if not hasattr(os, "fork") or _state.get("pid") == os.getpid():
        return _speak_here(text, voice=voice, speed=speed, pitch=pitch)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: speak, send rate + samples (or the error) down the pipe, leave at once
        code = 0
        try:
            os.close(read_end)
            try:
                audio, rate = _speak_here(text, voice=voice, speed=speed, pitch=pitch)
                payload = b"A" + rate.to_bytes(4, "little") + audio.astype("<i2").tobytes()
            except EspeakError as exc:
                payload = b"E" + str(exc).encode()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if payload[:1] == b"E":
        raise EspeakError(payload[1:].decode())
    if payload[:1] != b"A" or status != 0:
        raise EspeakError(f"libespeak-ng's process for {text[:40]!r} ended without audio (wait status {status})")
    return np.frombuffer(payload[5:], dtype="<i2").astype(np.int16), int.from_bytes(payload[1:5], "little")


def _speak_here(text: str, *, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    with _lock:
        lib, rate, chunks = _library()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"libespeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, speed), (_VOLUME, 100), (_PITCH, pitch)):
            lib.espeak_SetParameter(parameter, value, 0)
        chunks.clear()
        # the variants with breath (f2, f3, f5) draw noise from a generator that
        # espeak_Initialize seeds with the time: seed it again, so a clip never depends on when it was spoken
        lib.espeak_ng_SetRandSeed(0)
        encoded = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        chunks.clear()
    if status != 0 or audio.size == 0:
        raise EspeakError(f"libespeak-ng failed for {text[:40]!r} (status {status})")
    return audio, rate


def write_wav(path: str | os.PathLike[str], text: str, *, voice: str = "el", speed: int = 175,
              pitch: int = 50) -> Path:
    """What ``espeak-ng -v VOICE -s SPEED -p PITCH -w PATH TEXT`` writes: a 22050 Hz PCM-16 WAV."""
    audio, rate = speak(text, voice=voice, speed=speed, pitch=pitch)
    sf.write(path, audio, rate, subtype="PCM_16", format="WAV")
    return Path(path)


def variant_names() -> set[str]:
    """The voice variants the voice data holds (``el+m3`` speaks Greek with variant ``m3``)."""
    try:
        import espeakng_loader
    except ImportError:
        raise EspeakError(f"espeakng-loader is not installed ({INSTALL_HINT})") from None
    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
