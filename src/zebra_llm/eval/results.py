"""Results files: one JSON per run, written atomically after every item, so a
long run that is stopped resumes where it was.

Layout::

    {
      "kind": "ppl" | "passkey" | "needle" | "bench",
      "format": 1,
      "config": {...},          # the full configuration of the run
      "identity": {...},        # the part of it that per-item results depend on
      "key_fields": [...],      # which item fields identify an item
      "versions": {...},        # python, torch, transformers, zebra_llm, machine
      "models": {spec: {...}},  # per method: what was loaded and its limits
      "created": "...", "updated": "...",
      "items": [{...}, ...],    # per-item results, in the order they finished
      "summary": [{...}, ...]   # aggregated rows (recomputed from the items)
    }

Re-running with the same output path reuses every item whose key is present;
a different ``identity`` (another model, corpus, dtype, protocol) is refused
instead of mixing incompatible numbers in one file.

The path of a model or corpus is not its contents (issue 25, item 1): every item also records
``produced_by``, short hashes of what produced it -- the model's files (:func:`model_fingerprint`:
names, sizes and modification times of the files of its directory, and each safetensors header), the
method's settings as applied, the tokens the item scored (:func:`tokens_hash`) and the library version.
:meth:`ResultsFile.reuse` hands back an item only when all of them match; an item whose inputs changed
(or that predates the record) is recomputed, and :meth:`ResultsFile.resume_note` says how many items
were reused and how many recomputed, and why.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..io import write_json_atomic

FORMAT = 1


def versions() -> dict[str, Any]:
    import torch
    import transformers

    import zebra_llm

    info = {
        "zebra_llm": zebra_llm.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _digest(*parts) -> str:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def tokens_hash(ids) -> str:
    """A short hash of a token sequence (a 1D tensor or a list of ints)."""
    import torch

    t = torch.as_tensor(ids, dtype=torch.int64).contiguous()
    return _digest(t.numpy().tobytes())


def _files_fingerprint(paths) -> list:
    from ..loading import _MAX_HEADER

    out = []
    for path in sorted(paths):
        st = path.stat()
        entry = [path.name, st.st_size, st.st_mtime_ns]
        if path.suffix == ".safetensors" and st.st_size >= 8:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                entry.append(_digest(f.read(min(n, _MAX_HEADER))))  # names, shapes, dtypes, offsets, metadata
        out.append(entry)
    return out


def model_fingerprint(model_spec) -> str:
    """A short hash of what a model spec's weights are: for a directory, the names, sizes and
    modification times of its files and each safetensors file's header; for a ``.gguf`` file its
    size and time; for ``smollm2`` the packaged GGUF's; for a hub name the name. A ``(model,
    tokenizer)`` pair or a model object is hashed by its parameters' values."""
    from ..loading import ModelSource, smollm2_gguf

    if isinstance(model_spec, tuple):
        model_spec = model_spec[0]
    if not isinstance(model_spec, (str, os.PathLike)):
        import torch

        h = hashlib.blake2b(digest_size=8)
        for name, t in model_spec.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    source = ModelSource.parse(model_spec)
    if source.kind == "directory":
        return _digest(_files_fingerprint(p for p in Path(source.location).iterdir() if p.is_file()))
    if source.kind == "gguf":
        return _digest(_files_fingerprint([Path(source.location)]))
    if source.kind == "embedded":
        return _digest("smollm2", _files_fingerprint([smollm2_gguf()]))
    return _digest("hub", source.location)


def produced_by(**parts) -> dict:
    """The ``produced_by`` record of an item: each part hashed (strings of 16 hex digits kept as
    they are), with the library version."""
    import zebra_llm

    out = {k: v if isinstance(v, str) and len(v) == 16 else _digest(v) for k, v in parts.items()}
    out["zebra_llm"] = zebra_llm.__version__
    return out


_PART_NAMES = {"model": "the model's files", "method": "the method's settings", "tokens": "the scored tokens",
               "zebra_llm": "the zebra_llm version", "prompt": "the prompt"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _normalise(obj):
    """What ``obj`` looks like after a JSON round trip (tuples become lists, ...)."""
    from ..io import _jsonable

    return json.loads(json.dumps(obj, default=_jsonable))


class ResultsFile:
    """A run's results, resumable: ``get(**key)`` finds a finished item, ``add(item)`` saves one.

    ``path=None`` keeps everything in memory (library use without a file).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        kind: str,
        config: dict,
        identity: dict,
        key_fields: Iterable[str],
        resume: bool = True,
    ):
        self.path = Path(path) if path is not None else None
        self.key_fields = list(key_fields)
        identity = _normalise(identity)
        self.data: dict[str, Any] = {
            "kind": kind,
            "format": FORMAT,
            "config": _normalise(config),
            "identity": identity,
            "key_fields": self.key_fields,
            "versions": versions(),
            "models": {},
            "created": _now(),
            "updated": _now(),
            "items": [],
            "summary": [],
        }
        if self.path is not None and self.path.exists() and resume:
            old = load_results(self.path)
            if old.get("kind") != kind:
                raise ValueError(
                    f"output: {self.path} holds {old.get('kind')!r} results, not {kind!r}; choose another --output"
                )
            if old.get("identity") != identity:
                diff = sorted(
                    k for k in set(identity) | set(old.get("identity", {}))
                    if identity.get(k) != old.get("identity", {}).get(k)
                )
                raise ValueError(
                    f"output: {self.path} was written with a different {', '.join(diff)}; "
                    "choose another --output or pass --overwrite"
                )
            self.data["created"] = old.get("created", self.data["created"])
            self.data["items"] = old.get("items", [])
            self.data["models"] = old.get("models", {})
        self._index = {self._key(item): i for i, item in enumerate(self.data["items"])}
        self.reused = 0
        self.recomputed: dict[str, int] = {}  # why -> how many items

    def _key(self, item: dict) -> tuple:
        return tuple(json.dumps(_normalise(item.get(f)), sort_keys=True) for f in self.key_fields)

    @property
    def items(self) -> list[dict]:
        return self.data["items"]

    def get(self, **key) -> dict | None:
        i = self._index.get(self._key(key))
        return None if i is None else self.data["items"][i]

    def reuse(self, produced: dict, **key) -> dict | None:
        """The finished item of ``key`` if it was produced by ``produced`` (see :func:`produced_by`);
        None when there is none, or when what produced it differs (the item is then recomputed and
        counted, by what changed, for :meth:`resume_note`)."""
        item = self.get(**key)
        if item is None:
            return None
        old = item.get("produced_by")
        produced = _normalise(produced)
        if old == produced:
            self.reused += 1
            return item
        if not isinstance(old, dict):
            why = "written before results recorded what produced them"
        else:
            why = ", ".join(_PART_NAMES.get(k, k) for k in sorted(set(old) | set(produced))
                            if old.get(k) != produced.get(k)) + " changed"
        self.recomputed[why] = self.recomputed.get(why, 0) + 1
        return None

    def resume_note(self) -> str | None:
        """``"reused 12 of 15 items of results/ppl.json; recomputed 3 (the model's files changed)"``,
        or None when nothing was found in the file."""
        stale = sum(self.recomputed.values())
        if not self.reused and not stale:
            return None
        where = self.path if self.path is not None else "memory"
        text = f"reused {self.reused} finished item(s) of {where}"
        if stale:
            text += "; recomputed " + "; ".join(f"{n} ({why})" for why, n in self.recomputed.items())
        return text

    def add(self, item: dict) -> None:
        item = _normalise(item)
        k = self._key(item)
        if k in self._index:
            self.data["items"][self._index[k]] = item
        else:
            self._index[k] = len(self.data["items"])
            self.data["items"].append(item)
        self.save()

    def set_model(self, method: str, info: dict) -> None:
        self.data["models"][method] = _normalise(info)
        self.save()

    def set_summary(self, rows: list[dict]) -> None:
        self.data["summary"] = _normalise(rows)
        self.save()

    def finish(self, who: str, summary: list[dict]) -> dict:
        """The end of a run: what a resume reused said on stderr (``"ppl: reused ..."``, see
        :meth:`resume_note`), ``summary`` saved; returns the results dict."""
        note = self.resume_note()
        if note:
            print(f"{who}: {note}", file=sys.stderr)
        self.set_summary(summary)
        return self.data

    def save(self) -> None:
        self.data["updated"] = _now()
        if self.path is not None:
            write_json_atomic(self.path, self.data)


def load_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"results: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or "kind" not in data or "items" not in data:
        raise ValueError(f"results: {path} is not a zebra results file (no 'kind' and 'items')")
    return data


def group_rows(items: list[dict], by: tuple[str, ...], reduce: Callable[[list[dict]], dict]) -> list[dict]:
    """Rows of ``reduce(items)`` per distinct value of the ``by`` fields, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault(tuple(json.dumps(item.get(f)) for f in by), []).append(item)
    rows = []
    for members in groups.values():
        row = {f: members[0].get(f) for f in by}
        row.update(reduce(members))
        rows.append(row)
    return rows
