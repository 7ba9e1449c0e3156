"""Token documents for evaluation: any source ``zebra_llm.data.load_documents``
reads, tokenized once (with the on-disk token cache)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Document, load_documents, tokenize_documents


@dataclass
class TokenDocs:
    """Named token sequences (1D LongTensors) from one data source."""

    source: str
    names: list[str]
    ids: list[torch.Tensor]

    def lengths(self) -> list[int]:
        return [len(t) for t in self.ids]

    def longest(self) -> tuple[int, str]:
        if not self.ids:
            return 0, "(none)"
        i = max(range(len(self.ids)), key=lambda j: len(self.ids[j]))
        return len(self.ids[i]), self.names[i]

    def too_short(self, needed: int, what: str) -> ValueError:
        n, name = self.longest()
        found = f"the longest has {n} tokens ({name})" if self.ids else "it has no documents"
        return ValueError(f"data: {what} needs a document of at least {needed} tokens, but {found} in {self.source}")


def load_token_docs(
    tokenizer,
    data: str | None = None,
    *,
    field: str = "text",
    split: str = "train",
    limit: int | None = None,
    concat: bool = False,
    add_bos: bool = True,
    encoding: str = "utf-8",
) -> TokenDocs:
    """Load and tokenize documents; ``concat`` joins them (EOS-separated) into one stream
    for corpora of short documents."""
    docs: list[Document] = load_documents(data, field=field, split=split, limit=limit, encoding=encoding)
    ids = tokenize_documents(docs, tokenizer, add_bos=add_bos)
    names = [d.name for d in docs]
    source = "stdlib" if data is None else str(data)
    if sum(len(t) for t in ids) <= (len(ids) if add_bos else 0):
        raise ValueError(f"data: {source} has no tokens (all {len(ids)} documents are empty after tokenization)")
    if concat and len(ids) > 1:
        sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        parts = []
        for i, t in enumerate(ids):
            body = t if i == 0 or not add_bos else t[1:]  # one BOS at the very start
            parts.append(body)
            if i < len(ids) - 1 and sep:
                parts.append(torch.tensor(sep, dtype=torch.long))
        ids = [torch.cat(parts)]
        names = [f"{source} (concatenated, {len(docs)} documents)"]
    return TokenDocs(source, names, ids)
