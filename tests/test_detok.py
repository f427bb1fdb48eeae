"""Incremental detokenization and stop handling (RequestStream + TextStream) on the real v3 tokenizer.

Every test feeds real token ids one at a time, as an engine does, and checks what a streaming client
and a non-streaming client would see.
"""

from __future__ import annotations

import pytest

from trtbuild.runtime.detok import REPLACEMENT, TextStream
from trtbuild.runtime.interface import RequestStream, SamplingParams

CHAT_QUESTION = [{"role": "user", "content": "Say something."}]


def feed(tokenizer, prompt_ids, generated, **params):
    """Emit `generated` into a fresh RequestStream until it finishes -> (stream, events)."""
    params.setdefault("max_tokens", 1000)
    stream = RequestStream(tokenizer, prompt_ids, SamplingParams(**params), max_seq_len=100_000)
    for token in generated:
        if stream.emit_token(token):
            break
    else:
        stream.finish("length")  # the engine ran out of tokens to give: end like max_tokens would
    return stream, list(stream)


def streamed_text(events) -> str:
    return "".join(e.text for e in events)


def assert_stream_consistent(stream, events):
    """What a streaming client saw equals the final text; finish_reason once, on the last event."""
    assert streamed_text(events) == stream.result().text
    assert [e.finish_reason for e in events][:-1] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == stream.finish_reason
    assert not any(REPLACEMENT in e.text for e in events)


@pytest.mark.parametrize("text", [
    "🦜 parrots and 🫠 melting faces",  # emoji that exist only as byte-fallback pieces
    "你好世界, 龘 and 鬱",  # common CJK pieces, then rare characters spelled in UTF-8 bytes
    "Old Church Slavonic ꙮ and math 𝔘𝔫𝔦",  # 3- and 4-byte characters, several in a row
    "naïve café 🧑‍🚀 done",  # a ZWJ sequence: byte pieces, a joiner piece, a whole-emoji piece
])
def test_byte_fallback_never_emits_replacement_chars(tokenizer, text):
    ids = tokenizer.encode(text, bos=False)
    assert any(tokenizer.id_to_piece(i).startswith("<0x") for i in ids), "the text must need byte pieces"
    prompt = tokenizer.encode_chat(CHAT_QUESTION)
    stream, events = feed(tokenizer, prompt, ids)
    assert_stream_consistent(stream, events)
    assert stream.result().text == tokenizer.decode(ids) == text
    # Byte pieces release nothing until their character is complete, then the whole character at once.
    byte_events = [e for e, i in zip(events, ids) if tokenizer.id_to_piece(i).startswith("<0x")]
    assert any(e.text == "" for e in byte_events)


def test_generation_cut_inside_a_character_drops_the_partial_bytes(tokenizer):
    ids = tokenizer.encode("ok 🦜", bos=False)  # [▁ok, ▁, <0xF0>, <0x9F>, <0xA6>, <0x9C>]
    stream, events = feed(tokenizer, [1], ids[:-2], max_tokens=len(ids) - 2)
    assert stream.finish_reason == "length"
    assert stream.result().text == "ok "
    assert_stream_consistent(stream, events)


def test_first_reply_token_after_inst_has_no_leading_space(tokenizer):
    prompt = tokenizer.encode_chat(CHAT_QUESTION)
    reply = tokenizer.encode("Paris is nice", bos=False)  # '▁Paris' carries a SentencePiece space
    stream, events = feed(tokenizer, prompt, reply)
    assert events[0].text == "Paris"
    assert stream.result().text == "Paris is nice"


def test_completion_after_plain_text_keeps_its_leading_space(tokenizer):
    prompt = tokenizer.encode("Once upon a")
    continuation = tokenizer.encode("Once upon a time there", bos=True)[len(prompt):]
    stream, events = feed(tokenizer, prompt, continuation)
    assert events[0].text == " time"
    assert stream.result().text == " time there"
    assert tokenizer.decode(prompt) + stream.result().text == "Once upon a time there"


def test_runs_of_spaces_and_newlines_survive(tokenizer):
    text = "a  b\n\n    indented\tend"
    stream, events = feed(tokenizer, tokenizer.encode_chat(CHAT_QUESTION), tokenizer.encode(text, bos=False))
    assert stream.result().text == tokenizer.decode(tokenizer.encode(text, bos=False))
    assert_stream_consistent(stream, events)


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens_never_leaks(tokenizer, include):
    text = "Hello world. The end is near. More text after the stop."
    ids = tokenizer.encode(text, bos=False)  # ... '▁end', '▁is', ... : the stop string spans two tokens
    stream, events = feed(tokenizer, tokenizer.encode_chat(CHAT_QUESTION), ids, stop=["end is"],
                          include_stop_str_in_output=include)
    expected = "Hello world. The end is" if include else "Hello world. The "
    result = stream.result()
    assert (result.text, result.finish_reason, result.stop_reason) == (expected, "stop", "end is")
    assert_stream_consistent(stream, events)
    # At no point did the client see text that is not part of the final answer (no "end" then a cut).
    seen = ""
    for event in events:
        seen += event.text
        assert expected.startswith(seen)
    assert len(result.token_ids) == ids.index(tokenizer.encode("Hello world. The end is", bos=False)[-1]) + 1


def test_stop_string_inside_one_token_and_earliest_of_several(tokenizer):
    ids = tokenizer.encode("The capital of France is Paris, a city.", bos=False)
    stream, events = feed(tokenizer, [1], ids, stop=["city", "apit"])  # "apit" sits inside '▁capital'
    assert stream.result().text == "The c"
    assert stream.stop_reason == "apit"
    assert_stream_consistent(stream, events)


def test_held_back_prefix_is_released_when_generation_ends_otherwise(tokenizer):
    ids = tokenizer.encode("We stop at the en", bos=False)
    stream, events = feed(tokenizer, [1], ids, stop=["end of story"], max_tokens=len(ids))
    assert stream.finish_reason == "length"
    assert stream.result().text == "We stop at the en"
    assert_stream_consistent(stream, events)
    # While it was running, the possible stop-string prefix was held back from the client.
    assert streamed_text(events[:-1]) != stream.result().text


def test_streaming_and_non_streaming_clients_agree(tokenizer):
    ids = tokenizer.encode("One, two, three. Four! 🦜 Five?", bos=False)
    prompt = tokenizer.encode_chat(CHAT_QUESTION)
    streaming, events = feed(tokenizer, prompt, ids, stop=["Five"])
    whole, _ = feed(tokenizer, prompt, ids, stop=["Five"])
    assert streamed_text(events) == whole.result().text == "One, two, three. Four! 🦜 "


def test_stop_token_ids_end_the_request_without_their_text(tokenizer):
    ids = tokenizer.encode("alpha beta gamma delta", bos=False)
    stop_id = ids[2]  # '▁gamma'
    stream, events = feed(tokenizer, [1], ids, stop_token_ids=[stop_id])
    result = stream.result()
    assert (result.text, result.finish_reason, result.stop_reason) == ("alpha beta", "stop", stop_id)
    assert result.token_ids == ids[:3]
    assert_stream_consistent(stream, events)


def test_eos_ends_with_stop_unless_ignored(tokenizer):
    ids = tokenizer.encode("done", bos=False) + [tokenizer.eos_id] + tokenizer.encode("more", bos=False)
    stream, _ = feed(tokenizer, [1], ids)
    assert (stream.result().text, stream.finish_reason, stream.stop_reason) == ("done", "stop", None)
    stream, _ = feed(tokenizer, [1], ids, ignore_eos=True)
    assert stream.result().text == "done more" and stream.finish_reason == "length"


def test_min_tokens_suppresses_early_stops(tokenizer):
    ids = tokenizer.encode("end", bos=False) + [tokenizer.eos_id] + tokenizer.encode("the end again", bos=False)
    stream, _ = feed(tokenizer, [1], ids, stop=["end"], min_tokens=4)
    # Neither the first "end" (token 1) nor the EOS (token 2) may stop it; the second "end" does.
    assert stream.finish_reason == "stop" and stream.stop_reason == "end"
    assert stream.result().text.startswith("end")
    assert len(stream.token_ids) >= 4


def test_max_tokens_and_context_limit_end_with_length(tokenizer):
    ids = tokenizer.encode("one two three four five six", bos=False)
    stream, events = feed(tokenizer, [1], ids, max_tokens=3)
    assert stream.finish_reason == "length" and len(stream.token_ids) == 3
    limited = RequestStream(tokenizer, [1, 2, 3], SamplingParams(max_tokens=100), max_seq_len=5)
    assert not limited.emit_token(ids[0]) and limited.emit_token(ids[1])
    assert limited.finish_reason == "length"


def test_text_stream_alone_matches_full_decode(tokenizer):
    text = "Mixed: ASCII, 你好, ꙮ, 🦜, and spaces  ."
    ids = tokenizer.encode(text, bos=False)
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any(REPLACEMENT in p for p in pieces)


async def test_async_iteration_sees_the_same_events(tokenizer):
    ids = tokenizer.encode("async streaming 🦜 works", bos=False)
    stream, events = feed(tokenizer, tokenizer.encode_chat(CHAT_QUESTION), ids)
    collected = [event async for event in stream]
    assert [e.text for e in collected] == [e.text for e in events]
    assert (await stream.aresult()).text == "async streaming 🦜 works"


def test_cancel_ends_with_abort_and_blocks_later_tokens(tokenizer):
    ids = tokenizer.encode("one two three", bos=False)
    cancelled = []
    stream = RequestStream(tokenizer, [1], SamplingParams(max_tokens=10), 100, on_cancel=cancelled.append)
    stream.emit_token(ids[0])
    stream.cancel()
    assert stream.emit_token(ids[1]) is True  # the engine learns it is finished
    result = stream.result()
    assert (result.finish_reason, result.token_ids, result.text) == ("abort", ids[:1], "one")
    assert cancelled == [stream]


class _DecodeOnly:
    """The tokenizer without piece_texts: TextStream then decodes every delta in full."""

    def __init__(self, tokenizer):
        self.decode = tokenizer.decode


def test_the_plain_piece_shortcut_equals_full_decoding(tokenizer):
    import random

    rng = random.Random(0)
    for _ in range(200):  # random contexts and outputs, a fifth of them control, byte and low ids
        context = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.choice([0, 1, 3, 6]))]
        ids = [rng.randrange(tokenizer.vocab_size) if rng.random() < 0.8 else rng.randrange(3, 300) for _ in range(40)]
        fast, slow = TextStream(tokenizer, context), TextStream(_DecodeOnly(tokenizer), context)
        assert fast.pieces is not None and slow.pieces is None
        assert [fast.push(t) for t in ids] + [fast.flush()] == [slow.push(t) for t in ids] + [slow.flush()]
