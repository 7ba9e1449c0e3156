"""Text sources, tokenization, packing and instruction formatting."""

from .sources import DEFAULT, Document, load_documents, stdlib_corpus
from .tokens import tokenize_document, tokenize_documents, tokenizer_fingerprint

__all__ = [
    "DEFAULT",
    "Document",
    "load_documents",
    "stdlib_corpus",
    "tokenize_document",
    "tokenize_documents",
    "tokenizer_fingerprint",
]
