"""Where text comes from: local files, directories, `datasets` names, or the
default corpus of long modules from Python's own standard library.

Every loader returns a list of :class:`Document` (a name and its text), in a
deterministic order, and raises a clear error when nothing usable is found.

Text is decoded strictly with one ``encoding`` (UTF-8 by default) for every
format: a byte that does not decode is an error naming the file and the byte
offset, never a silent replacement character; a record whose text field is
not a string is an error naming the record, never its ``str()``.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..io import decode_text, describe_file_kind, jsonl_records, read_text_file

DEFAULT = "stdlib"

# Long modules of the standard library (DESIGN.md): code documents of 25k-61k
# SmolLM2 tokens, and pydoc's topic texts as English prose.
STDLIB_MODULES = (
    "_pydecimal.py",
    "turtle.py",
    "inspect.py",
    "typing.py",
    "pydoc.py",
    "tarfile.py",
)
STDLIB_PROSE = "pydoc_data/topics.py"

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(*, prose: bool = True) -> list[Document]:
    """The default corpus: the long stdlib modules, then (if ``prose``) pydoc's topics."""
    root = stdlib_dir()
    names = list(STDLIB_MODULES) + ([STDLIB_PROSE] if prose else [])
    docs = []
    for name in names:
        path = root / name
        if path.is_file():
            docs.append(Document(name, path.read_text(encoding="utf-8")))
    if not docs:
        raise FileNotFoundError(f"data: no standard-library modules found under {root}")
    return docs


def load_documents(
    source: str | os.PathLike | None = None,
    *,
    field: str = "text",
    split: str = "train",
    limit: int | None = None,
    min_chars: int = 1,
    encoding: str = "utf-8",
) -> list[Document]:
    """Load documents from ``source``.

    ``source`` is one of:
      * ``None`` or ``"stdlib"``: the default standard-library corpus;
      * a ``.txt``/``.md``/``.py`` file: one document;
      * a ``.jsonl`` file: one document per line, text in ``field``;
      * a ``.parquet`` file: one document per row, text in column ``field``;
      * a directory: every text file under it (sorted), one document each;
      * a `datasets` name (``"pg19"``, ``"org/name"`` or ``"org/name:config"``),
        read with ``split`` and ``field`` (needs network access or a local cache).

    Documents shorter than ``min_chars`` are skipped; ``limit`` keeps the first N.
    Local files are decoded with ``encoding`` (strictly: an undecodable byte is a
    ValueError naming the file and its offset).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    check_encoding(encoding)
    label = DEFAULT if source is None else str(source)
    if source is None or str(source) == DEFAULT:
        docs = stdlib_corpus()
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            docs = _load_directory(path, encoding=encoding)
        elif path.is_file():
            docs = _load_file(path, field=field, encoding=encoding)
        elif path.exists():
            raise ValueError(f"data: {source} is not a regular file or directory (it is {describe_file_kind(path)})")
        elif _looks_like_path(str(source)):
            raise FileNotFoundError(f"data: {source} does not exist")
        else:
            docs = _load_dataset(str(source), split=split, field=field, limit=limit)
    docs = [d for d in docs if len(d.text) >= min_chars]
    if limit is not None:
        docs = docs[:limit]
    if not docs:
        raise ValueError(f"data: no documents with text found in {label}")
    return docs


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or spec.endswith((".jsonl", ".json", ".parquet") + TEXT_SUFFIXES)
    )


def check_encoding(encoding: str) -> None:
    """A ValueError naming the option when ``encoding`` is not a codec Python knows."""
    import codecs

    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"data.encoding: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None


def text_field(value, *, field: str, where: str) -> str:
    """The text of a record's ``field``: strings as they are, anything else an error naming the record."""
    if not isinstance(value, str):
        raise ValueError(f"data: {where} field {field!r} must be a string, got {type(value).__name__} ({value!r:.40})")
    return value


def _load_file(path: Path, *, field: str, encoding: str = "utf-8") -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = []
        for lineno, record in jsonl_records(path, encoding=encoding):
            if not isinstance(record, dict) or field not in record:
                raise ValueError(f"data: {path} line {lineno} has no field {field!r} (use --field to pick one)")
            docs.append(Document(f"{path.name}:{lineno}", text_field(record[field], field=field,
                                                                     where=f"{path} line {lineno}")))
        return docs
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise ValueError(f"data: {path} has no column {field!r}; columns are {table.column_names}")
        docs = []
        for i, t in enumerate(table.column(field).to_pylist()):
            if isinstance(t, bytes):  # a binary column: decoded like a text file
                t = decode_text(t, path=f"{path} row {i}", encoding=encoding)
            docs.append(Document(f"{path.name}:{i}", text_field(t, field=field, where=f"{path} row {i}")))
        return docs
    return [Document(path.name, read_text_file(path, encoding=encoding))]


def _load_directory(path: Path, *, encoding: str = "utf-8") -> list[Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    return [Document(str(p.relative_to(path)), read_text_file(p, encoding=encoding)) for p in files]


def _load_dataset(name: str, *, split: str, field: str, limit: int | None) -> list[Document]:
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split, streaming=True)
    except Exception as e:  # datasets raises many types for "not found / offline"
        raise FileNotFoundError(
            f"data: {name!r} is neither a local file or directory nor a loadable dataset ({type(e).__name__}: {e})"
        ) from None
    docs = []
    for i, record in enumerate(ds):
        if field not in record:
            raise ValueError(f"data: dataset {name!r} has no field {field!r}; fields are {sorted(record)}")
        docs.append(Document(f"{name}:{split}:{i}", text_field(record[field], field=field,
                                                                where=f"dataset {name!r} record {i}")))
        if limit is not None and len(docs) >= limit:
            break
    return docs
