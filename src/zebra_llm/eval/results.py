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
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
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

    def _key(self, item: dict) -> tuple:
        return tuple(json.dumps(_normalise(item.get(f)), sort_keys=True) for f in self.key_fields)

    @property
    def items(self) -> list[dict]:
        return self.data["items"]

    def get(self, **key) -> dict | None:
        i = self._index.get(self._key(key))
        return None if i is None else self.data["items"][i]

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
