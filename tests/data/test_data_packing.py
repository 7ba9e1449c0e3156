import pytest
import torch

from zebra_llm.data.packing import IGNORE, PACKERS, curriculum_stages, pack_documents, padding_fraction

PAD = 0


def docs_of(*lengths):
    out, start = [], 1
    for n in lengths:
        out.append(torch.arange(start, start + n))
        start += n
    return out


def test_split_never_crosses_a_document():
    docs = docs_of(10, 3, 1, 8)
    p = pack_documents(docs, 4, mode="split", pad_id=PAD)
    # 10 -> 4+4+2, 3 -> 3, 1 -> (dropped: nothing to predict), 8 -> 4+4
    assert len(p) == 6
    for row_ids, row_labels in zip(p.input_ids, p.labels):
        real = row_ids[row_labels != IGNORE]
        owners = {next(i for i, d in enumerate(docs) if int(t) in d.tolist()) for t in real}
        assert len(owners) == 1
    assert p.input_ids[2].tolist() == [9, 10, PAD, PAD]
    assert p.labels[2].tolist() == [9, 10, IGNORE, IGNORE]
    assert (p.position_ids == torch.arange(4)).all()
    assert p.num_targets(range(len(p))) == 3 + 3 + 1 + 2 + 3 + 3


def test_packed_positions_restart_and_first_tokens_are_not_targets():
    docs = docs_of(3, 5, 2)
    p = pack_documents(docs, 4, mode="packed", pad_id=PAD)
    stream = torch.cat(docs)
    assert p.input_ids.flatten()[: stream.numel()].tolist() == stream.tolist()
    # rows: [A A A B] [B B B B] [C C pad pad]
    assert p.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 0, 1]]
    # B's continuation in row 1 restarts at 0 (a new segment for the mask); a
    # document's first token is never a target, nor is padding
    assert p.labels.tolist() == [[IGNORE, 2, 3, IGNORE], [5, 6, 7, 8], [IGNORE, 10, IGNORE, IGNORE]]
    assert p.num_targets([0, 1, 2]) == 2 + 3 + 1


def test_concat_is_one_stream():
    docs = docs_of(3, 5, 2)
    p = pack_documents(docs, 4, mode="concat", pad_id=PAD)
    assert p.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, PAD, PAD]]
    assert p.labels[2].tolist() == [9, 10, IGNORE, IGNORE]
    assert (p.position_ids == torch.arange(4)).all()


def test_errors_and_padding_fraction():
    with pytest.raises(ValueError, match="data.packing"):
        pack_documents(docs_of(5), 4, mode="zip", pad_id=PAD)
    with pytest.raises(ValueError, match="no training sequence"):
        pack_documents([torch.tensor([7])], 4, mode="split", pad_id=PAD)
    p = pack_documents(docs_of(2, 2), 8, mode="split", pad_id=PAD)
    assert padding_fraction(p) == pytest.approx(12 / 16)
    assert set(PACKERS) == {"split", "packed", "concat"}


def test_curriculum_stages():
    assert curriculum_stages([(5, 64), (5, 128)], 256, 20) == [(0, 64), (5, 128), (10, 256)]
    with pytest.raises(ValueError, match="curriculum"):
        curriculum_stages([(20, 64)], 256, 20)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_rows_attend_within_documents_only(impl):
    """The oracle: a packed row's logits equal each document's logits alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, attn_implementation=impl)
    ).eval()
    docs = [torch.randint(1, 64, (n,)) for n in (5, 7, 4)]
    p = pack_documents(docs, 16, mode="packed", pad_id=0)
    assert len(p) == 1
    with torch.no_grad():
        # use_cache=False as in training: transformers derives the document mask
        # only when there is no cache
        packed = model(input_ids=p.input_ids, position_ids=p.position_ids, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=d[None], use_cache=False).logits[0] for d in docs])
        crossing = model(input_ids=p.input_ids, use_cache=False).logits[0]  # same tokens, no restart
    assert torch.allclose(packed[:16], alone, atol=1e-5)
    assert not torch.allclose(crossing[5:16], alone[5:], atol=1e-3)
