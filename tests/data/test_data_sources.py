"""Text that is not text (issue 11, item 7): every loader decodes strictly with
one ``encoding``, names the file and byte offset of a byte that does not
decode, and refuses record fields that are not strings instead of ``str()``."""

import json
import os

import pytest

from zebra_llm.data import load_documents
from zebra_llm.data.instructions import load_instruction_records, record_to_messages

LATIN1_TEXT = "Caf\u00e9 cr\u00e8me\n"
LATIN1 = LATIN1_TEXT.encode("latin-1")  # 0xe9 at offset 3: not UTF-8


def test_latin1_text_file_is_an_error_naming_file_and_offset_or_decoded_on_request(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"latin1.txt is not valid utf-8 text: byte 0xe9 at offset 3"):
        load_documents(path)
    (doc,) = load_documents(path, encoding="latin-1")
    assert doc.text == LATIN1_TEXT


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.txt"
    path.write_bytes(b"ok " + bytes(range(128, 256)))
    with pytest.raises(ValueError, match=r"noise.txt is not valid utf-8 text: byte 0x80 at offset 3"):
        load_documents(path)


def test_directories_jsonl_and_parquet_agree(tmp_path):
    corpus = tmp_path / "dir"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain ascii\n")
    (corpus / "b.txt").write_bytes(LATIN1)
    with pytest.raises(ValueError, match=r"b.txt is not valid utf-8 text: byte 0xe9 at offset 3"):
        load_documents(corpus)
    assert [d.text for d in load_documents(corpus, encoding="latin-1")] == ["plain ascii\n", LATIN1_TEXT]

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "' + LATIN1.strip() + b'"}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl is not valid utf-8 text: byte 0xe9 at offset 30"):
        load_documents(jsonl)
    assert [d.text for d in load_documents(jsonl, encoding="latin-1")] == ["fine", LATIN1_TEXT.strip()]
    jsonl.write_text('{"text": "fine"}\n{"text": 42}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl line 2 field 'text' must be a string, got int"):
        load_documents(jsonl)

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    numbers = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["one", None]}), numbers)
    with pytest.raises(ValueError, match=r"n.parquet row 1 field 'text' must be a string, got NoneType"):
        load_documents(numbers)
    raw = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([b"fine", LATIN1], type=pa.binary())}), raw)
    with pytest.raises(ValueError, match=r"b.parquet row 1 is not valid utf-8 text: byte 0xe9 at offset 3"):
        load_documents(raw)
    assert [d.text for d in load_documents(raw, encoding="latin-1")] == ["fine", LATIN1_TEXT]


def test_bad_encoding_names_and_special_files(tmp_path):
    with pytest.raises(ValueError, match=r"data.encoding: unknown encoding 'klingon'"):
        load_documents(tmp_path, encoding="klingon")
    with pytest.raises(ValueError, match=r"/dev/null is not a regular file or directory \(it is a character device\)"):
        load_documents("/dev/null")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"it is a FIFO"):
        load_documents(tmp_path / "pipe")


def test_lit_records_need_string_fields():
    with pytest.raises(ValueError, match=r"r: field 'prompt' must be a string, got int"):
        record_to_messages({"prompt": 1, "response": "a"}, where="r")
    with pytest.raises(ValueError, match=r"r: field 'response' must be a string, got list"):
        record_to_messages({"prompt": "q", "response": ["a"]}, where="r")
    with pytest.raises(ValueError, match=r"r: field 'system' must be a string, got dict"):
        record_to_messages({"system": {}, "prompt": "q", "response": "a"}, where="r")
    # a null system is no system; content of messages was already checked
    assert record_to_messages({"system": None, "prompt": "q", "response": "a"})[0] == {"role": "user", "content": "q"}
    with pytest.raises(ValueError, match=r"messages\[0\].content must be a string"):
        record_to_messages({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]})


def test_lit_file_encoding(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"prompt": "' + LATIN1.strip() + b'", "response": "ok"}\n')
    with pytest.raises(ValueError, match=r"data.path: .*x.jsonl is not valid utf-8 text: byte 0xe9 at offset 15"):
        load_instruction_records(path)
    (messages,) = load_instruction_records(path, encoding="latin-1")
    assert messages[0]["content"] == LATIN1_TEXT.strip()
    path.write_text(json.dumps({"prompt": "q", "response": 7}) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl line 1: field 'response' must be a string, got int"):
        load_instruction_records(path)
