"""``zebra serve smollm2 --method dca`` answers the OpenAI client's streamed chat request on a prompt
past SmolLM2's trained context of 8192 tokens (slow: an 8.3k-token prefill on CPU), while the model
served unmodified refuses that prompt with a 400 naming its limit, before any compute."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

PAST = 8192 + 128  # just past the trained context: as short as the point allows


@pytest.mark.slow
def test_smollm2_dca_streams_a_chat_answer_past_the_trained_context(smollm2_dir):
    import torch

    from zebra_llm.eval.loaded import load_with_method
    from zebra_llm.eval.passkey import passkey_prompt
    from zebra_llm.serve import ServerThread, create_app

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    loaded = load_with_method("smollm2", "dca")
    assert loaded.info["trained_context"] == 8192
    def chat_tokens(content: str) -> int:
        return len(loaded.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                        add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"])

    # the passkey prompt as text; its tokens re-merge when the text is encoded again, and the chat template
    # adds its own, so the length is corrected until the chat prompt is just past PAST tokens
    length = PAST
    for _ in range(4):
        prompt = passkey_prompt(loaded.tokenizer, length, depth=0.5, key_seed=7)
        text = loaded.tokenizer.decode(prompt.ids, skip_special_tokens=True)
        have = chat_tokens(text)
        if PAST <= have < PAST + 64:
            break
        length += PAST - have
    assert PAST <= have < PAST + 64, have
    app = create_app(loaded, served_model_name="smollm2")
    with ServerThread(app) as server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0,
                                                    timeout=1800) as client:
        chunks = list(client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": text}], max_tokens=12, temperature=0,
            stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert usage.prompt_tokens == have > 8192, usage
    assert 1 <= usage.completion_tokens <= 12 and answer.strip(), chunks[-3:]
    print(f"prompt {usage.prompt_tokens} tokens, key {prompt.answer}, answer {answer!r}")

    plain = create_app(load_with_method("smollm2", "none"), served_model_name="smollm2")
    with ServerThread(plain) as server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0,
                                                      timeout=60) as client:
        with pytest.raises(openai.BadRequestError, match="context limit is 8192 tokens"):
            client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": text}],
                                           max_tokens=12)
        assert plain.state.engine.snapshot_stats()["steps"] == 0
