"""Datasets read with Hugging Face ``datasets``: local parquet/arrow dirs and Hub dataset ids.

* a local **parquet/arrow dataset dir** (parquet or arrow files, split names inferred from the file
  names the way ``datasets`` does, or a ``save_to_disk`` directory); a ``config`` that names a
  subfolder selects it;
* a **Hugging Face Hub dataset id**, read with ``datasets.load_dataset(id, config, split=...,
  revision=..., streaming=...)``. Audio columns are cast to ``Audio(decode=False)`` and decoded by
  :func:`gpujob.runner.audio.decode` (never by ``datasets``/torchcodec). ``google/fleurs`` loads at
  ``revision: refs/convert/parquet``; datasets that need a loading script do not load with
  ``datasets`` >= 4 (use their parquet conversion the same way, or a local copy).

Load failures become :class:`DataError` messages that name the spec key and say what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpujob.reach import hub_endpoint, hub_offline_set, unreachable

from .source_parts import SPLIT_ALIASES, DataError, Part, Record, short

if TYPE_CHECKING:
    from gpujob.spec.models import Source

_FIX_HUB = ("check the network (and that HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are not set), set HF_TOKEN "
            "(list it under runtime.secrets) if the dataset is private or gated and you accepted its terms, "
            "or download a local copy and point `dataset:` at that directory")


def hf_parts(source: Source, path: str, splits: list[str], *, streaming: bool, key: str, local: bool) -> list[Part]:
    return [_hf_part(source, path, split, streaming=streaming, key=key, local=local) for split in splits]


def _hf_part(source: Source, path: str, split: str, *, streaming: bool, key: str, local: bool) -> Part:
    ds, split = _hf_load(source, path, split, streaming=streaming, key=key, local=local)
    columns = list(ds.column_names or [])
    if not columns:  # a stream without declared features: look at the first row
        try:
            columns = list(next(iter(ds)).keys())
        except StopIteration:
            columns = []
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"could not read the first row of {path} ({split}): {short(exc)}", key=key) from None
    num_rows: int | None = None
    if not streaming:
        num_rows = len(ds)
    else:
        try:
            info = ds.info.splits.get(split) if ds.info and ds.info.splits else None
            num_rows = int(info.num_examples) if info is not None and info.num_examples else None
        except Exception:  # noqa: BLE001 - size is only informative
            num_rows = None
        if num_rows is None and local and columns:  # local files: count one light column
            light = next((c for c in columns if c != source.audio_column), columns[0])
            try:
                num_rows = sum(1 for _ in ds.select_columns([light]))
            except Exception:  # noqa: BLE001
                num_rows = None
    base_dir = Path(path) if local else None

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[Record]:
        data = _cast_audio(ds, audio_col)
        keep = [c for c in (audio_col, text_col) if c in columns]
        try:
            data = data.select_columns(keep)
        except Exception:  # noqa: BLE001 - unknown features: keep all columns
            pass
        if shuffle:
            data = data.shuffle(seed=seed, buffer_size=1000) if streaming else data.shuffle(seed=seed)
        for i, row in enumerate(data):
            audio = row.get(audio_col)
            apath = audio.get("path") if isinstance(audio, dict) else audio if isinstance(audio, str) else None
            if isinstance(audio, str) and base_dir is not None and not Path(audio).is_absolute() \
                    and "://" not in audio and (base_dir / audio).exists():
                audio = str(base_dir / audio)
            yield Record(f"{split}/{apath}" if apath else f"{split}/{i}", audio, row.get(text_col))

    return Part(split, columns, num_rows, records)


def _cast_audio(ds: Any, column: str) -> Any:
    from datasets import Audio

    features = getattr(ds, "features", None) or {}
    feature = features.get(column) if hasattr(features, "get") else None
    if isinstance(feature, Audio) and feature.decode:
        return ds.cast_column(column, Audio(decode=False))
    return ds


def _hf_load(source: Source, path: str, split: str, *, streaming: bool, key: str, local: bool) -> tuple[Any, str]:
    """The dataset for ``split`` (or its alias: dev <-> validation) and the split name it was found under."""
    kwargs: dict[str, Any] = {"streaming": streaming}
    where = path
    if local:
        if (Path(path) / "dataset_dict.json").is_file() or (Path(path) / "state.json").is_file():
            return _from_disk(path, split, streaming, key)
        if source.config and (Path(path) / source.config).is_dir():
            kwargs["data_dir"] = source.config
        elif source.config:
            kwargs["name"] = source.config
    else:
        if source.config:
            kwargs["name"] = source.config
        if source.revision:
            kwargs["revision"] = source.revision
        where = f"{path}" + (f" ({source.config})" if source.config else "") + \
                (f" at revision {source.revision}" if source.revision else "")
        _check_hub_reachable(where, key)
    try:
        import datasets
    except ImportError:
        raise DataError("reading this dataset needs the `datasets` package (pip install datasets)", key=key) from None
    errors: list[BaseException] = []
    for name in (split, *SPLIT_ALIASES.get(split, ())):
        try:
            ds = datasets.load_dataset(path, split=name, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            errors.append(exc)
            if _is_split_error(exc):
                continue
            raise _hub_error(exc, where, split, key, local) from None
        return ds, name
    raise _hub_error(errors[0], where, split, key, local) from None


def _check_hub_reachable(where: str, key: str) -> None:
    """Offline or without DNS, say so in one line at once: the Hub's client would retry for most of a
    minute, printing each try. (With HF_HUB_OFFLINE set, the cache alone is read: no probe.)"""
    if hub_offline_set():
        return
    why = unreachable(hub_endpoint())
    if why:
        raise DataError(f"dataset {where}: the Hugging Face Hub cannot be reached from this machine ({why}). "
                        "To fix: check the network (or HF_ENDPOINT / HTTPS_PROXY); if the dataset is in the local "
                        "cache, set HF_HUB_OFFLINE=1 to read it from there; or download a local copy and point "
                        "`dataset:` at that directory", key=f"{key}.dataset")


def _from_disk(path: str, split: str, streaming: bool, key: str) -> tuple[Any, str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"could not load the saved dataset at {path}: {short(exc)}", key=f"{key}.dataset") from None
    if isinstance(loaded, datasets.DatasetDict):
        name = next((n for n in (split, *SPLIT_ALIASES.get(split, ())) if n in loaded), None)
        if name is None:
            raise DataError(f'split "{split}" not found in {path}; it has {", ".join(loaded)}', key=f"{key}.split")
        loaded, split = loaded[name], name
    elif split != "train":
        raise DataError(f'{path} holds a single dataset without splits; use split: train', key=f"{key}.split")
    if not streaming:
        return loaded, split
    stream = loaded.to_iterable_dataset()
    try:
        from datasets import SplitDict, SplitInfo

        stream.info.splits = SplitDict({split: SplitInfo(name=split, num_examples=len(loaded))})
    except Exception:  # noqa: BLE001 - the size is only informative
        pass
    return stream, split


def _is_split_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, (ValueError, KeyError)) and ("split" in text.lower()) and (
        "Unknown split" in text or "Bad split" in text or "Available splits" in text or "Should be one of" in text)


def _hub_error(exc: BaseException, where: str, split: str, key: str, local: bool) -> DataError:
    text = short(exc)
    lowered = text.lower()
    kind = type(exc).__name__
    if _is_split_error(exc):
        return DataError(f'split "{split}" not found in {where}: {text}', key=f"{key}.split")
    if "script" in lowered and ("no longer supported" in lowered or "loading script" in lowered):
        return DataError(f"{where} needs a loading script, which datasets >= 4 cannot run ({text}); use its "
                         "parquet conversion with `revision: refs/convert/parquet` (this works for google/fleurs), "
                         "or a local copy", key=f"{key}.revision")
    if "builderconfig" in lowered or "config name is missing" in lowered or "config named" in lowered:
        return DataError(f"config problem for {where}: {text}", key=f"{key}.config")
    if local:
        return DataError(f"could not read the dataset in {where}: {kind}: {text}", key=f"{key}.dataset")
    where = f"{where} (no local directory of that name exists either)" if "/" in where.split(" ")[0] else where
    unreachable = (isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "offline" in lowered
                   or "couldn't reach" in lowered or "connection" in lowered or "timed out" in lowered
                   or kind in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError"))
    if kind in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError") or "doesn't exist" in lowered \
            or "not found" in lowered and not unreachable:
        return DataError(f"dataset {where} could not be found on the Hugging Face Hub, or it is private/gated "
                         f"({text}). Check the id; {_FIX_HUB}", key=f"{key}.dataset")
    if unreachable:
        return DataError(f"dataset {where} could not be reached on the Hugging Face Hub ({text}). To fix: "
                         f"{_FIX_HUB}", key=f"{key}.dataset")
    return DataError(f"could not load dataset {where}: {kind}: {text}", key=f"{key}.dataset")
