"""The from-scratch pretraining corpus: every ``.py`` file of Python's standard
library (site-packages excluded), split into train / valid / test BY FILE, and a
small byte-level BPE tokenizer trained on the train files only.

The split is a pure function of each file's path relative to the stdlib root
(a hash), so it never depends on which Python version adds or drops files: a
file is in exactly one split, and no test document is ever seen in training.
The tokenizer (``tokenizer.json``) is saved beside the results and reused, so a
resumed run tokenizes exactly as the first one did.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..data import Document
from ..data.sources import stdlib_dir

SPLITS = ("train", "valid", "test")
SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")


def file_split(relpath: str, *, valid_percent: int = 5, test_percent: int = 10) -> str:
    """``train``, ``valid`` or ``test`` for a file, from a hash of its relative path."""
    bucket = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100
    if bucket < valid_percent:
        return "valid"
    if bucket < valid_percent + test_percent:
        return "test"
    return "train"


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or stdlib_dir())
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    if not files:
        raise FileNotFoundError(f"data: no .py files under {root}")
    return files


@dataclass
class SplitCorpus:
    train: list[Document]
    valid: list[Document]
    test: list[Document]

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}


def split_corpus(root: str | os.PathLike | None = None, *, max_files: int | None = None,
                 min_chars: int = 200) -> SplitCorpus:
    """The stdlib's ``.py`` files as documents, split by file. ``max_files`` keeps
    the first N of each split (toy runs). Read once per process (the lists are shared: do not modify)."""
    return _split_corpus(str(Path(root or stdlib_dir())), max_files, min_chars)


@functools.lru_cache(maxsize=4)
def _split_corpus(root: str, max_files: int | None, min_chars: int) -> SplitCorpus:
    root = Path(root)
    out = {s: [] for s in SPLITS}
    for path in stdlib_files(root):
        rel = str(path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test fixtures are deliberately not UTF-8
        if len(text) < min_chars:
            continue
        out[file_split(rel)].append(Document(rel, text))
    if max_files is not None:
        out = {s: docs[:max_files] for s, docs in out.items()}
    for s, docs in out.items():
        if not docs:
            raise ValueError(f"data: the {s} split of {root} is empty")
    return SplitCorpus(**out)


def train_tokenizer(docs: list[Document], vocab_size: int, path: str | os.PathLike, *, max_chars: int = 8_000_000):
    """Train a byte-level BPE tokenizer on ``docs`` (at most ``max_chars`` characters)
    and save it as ``path`` (``tokenizer.json``); returns the transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        texts.append(d.text)
        total += len(d.text)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io import write_text_atomic

    write_text_atomic(path, tok.to_str())
    return load_bpe_tokenizer(path)


def load_bpe_tokenizer(path: str | os.PathLike):
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer: {path} does not exist")
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                                   pad_token=SPECIALS[2])


def bpe_tokenizer(docs: list[Document], vocab_size: int, path: str | os.PathLike):
    """The saved tokenizer at ``path`` if there is one (resume), else trained on ``docs`` and saved."""
    path = Path(path)
    if path.is_file():
        tok = load_bpe_tokenizer(path)
        if len(tok) != vocab_size:
            raise ValueError(f"tokenizer: {path} has {len(tok)} tokens, the config asks for {vocab_size}")
        return tok
    return train_tokenizer(docs, vocab_size, path)
