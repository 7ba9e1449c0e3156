"""Tokenizing documents once, with an on-disk cache.

Long documents (the default corpus is hundreds of thousands of tokens) take
seconds to tokenize; evaluation and training both reuse the ids, cached under
``$ZEBRA_CACHE/tokens/<key>.pt`` where the key hashes the tokenizer's
vocabulary and the text. Cache files hold plain integer tensors and are read
with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import json

import torch

from ..io import write_bytes_atomic
from ..loading import cache_dir
from .sources import Document


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash that changes whenever the tokenizer's mapping could change."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id)).encode())
    return h.hexdigest()[:16]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def tokenize_document(doc: Document | str, tokenizer, *, add_bos: bool = True, cache: bool = True) -> torch.Tensor:
    """Token ids of one document as a 1D LongTensor (BOS first when ``add_bos``
    and the tokenizer has one). No special tokens other than BOS are added."""
    text = doc.text if isinstance(doc, Document) else doc
    key = None
    if cache:
        h = hashlib.sha256()
        h.update(tokenizer_fingerprint(tokenizer).encode())
        h.update(b"\0bos" if add_bos else b"\0nobos")
        h.update(text.encode("utf-8"))
        key = cache_dir() / "tokens" / f"{h.hexdigest()[:32]}.pt"
        if key.is_file():
            try:
                return torch.load(key, weights_only=True)
            except Exception:
                pass  # a corrupt cache entry is rebuilt below
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = torch.tensor((_bos(tokenizer) if add_bos else []) + list(ids), dtype=torch.long)
    if key is not None:
        buf = io.BytesIO()
        torch.save(out, buf)
        write_bytes_atomic(key, buf.getvalue())
    return out


def tokenize_documents(docs, tokenizer, *, add_bos: bool = True, cache: bool = True) -> list[torch.Tensor]:
    return [tokenize_document(d, tokenizer, add_bos=add_bos, cache=cache) for d in docs]
