"""Turn-taking on a virtual timeline (tests/harness.py): speech, barge-ins and chat at exact
times, and the exact times and order of what the character did about them."""

from __future__ import annotations

import pytest

from runtime.director import DirectorSettings
from runtime.events import InputKind, Stage, TurnStatus
from tests.harness import Call, chat, inline_threads, speech, timeline  # noqa: F401

REPLY = "I love puzzle games. They make me think hard. What about you?"
FIRST, SECOND, THIRD = "I love puzzle games.", "They make me think hard.", "What about you?"
pytestmark = pytest.mark.usefixtures("inline_threads")


def without_audio(calls: list[Call]) -> list[tuple[float, str, object]]:
    return [(c.at, c.what, c.detail) for c in calls if c.what != "play"]


async def test_a_barge_in_holds_the_reply_at_once_and_a_transcript_ends_it():
    # the model says a word every 50 ms; the voice speaks a word in 250 ms
    async with timeline(REPLY, voice_word_s=0.25) as tl:
        await tl.play(*speech("what is your favourite game?", 0.5, 2.5),
                      *speech("wait, stop", 5.0, 5.8), until=12.0)
    assert without_audio(tl.sink.calls) == [
        (2.5, "begin_turn", "you: what is your favourite game?"),  # the moment the transcript came
        (2.7, "sentence", FIRST),  # its fourth word, 4 x 50 ms later
        (3.7, "sentence", SECOND),  # when the first had been spoken: 4 words x 250 ms
        (4.95, "sentence", THIRD),
        (5.0, "pause", None),  # held the moment they started talking
        (5.8, "clear", None),  # and dropped when their words came
        (5.8, "end_turn", (True, f"{FIRST} {SECOND}")),  # what was heard: not a word of the third
        (5.8, "begin_turn", "you: wait, stop"),
        (6.0, "sentence", FIRST),
        (7.0, "sentence", SECOND),
        (8.25, "sentence", THIRD),
        (9.0, "end_turn", (False, REPLY)),
    ]
    held, answered = tl.records
    assert (held.status, held.interrupt_reason, held.spoken_text) == (TurnStatus.INTERRUPTED, "barge-in",
                                                                      f"{FIRST} {SECOND}")
    assert held.timings[Stage.FIRST_AUDIO] == 0.2 and held.timings[Stage.SPEECH_ONSET] == 2.5
    assert held.timings[Stage.BARGE_IN] == 2.5  # seconds after its input: no delay at all
    assert answered.status is TurnStatus.COMPLETE and answered.timings[Stage.LAST_AUDIO] == 3.2


async def test_a_noise_during_the_reply_holds_it_for_exactly_as_long_and_it_goes_on():
    async with timeline(REPLY, voice_word_s=0.25) as tl:
        await tl.play(*chat("hi!", 0.0), *speech("", 3.0, 3.3), until=10.0)
    calls = without_audio(tl.sink.calls)
    assert (3.0, "pause", None) in calls and (3.3, "resume", None) in calls
    assert calls[-1] == (3.5, "end_turn", (False, REPLY))  # 3.2 without the noise: 0.3 s later
    [record] = tl.records
    assert record.false_interruptions == 1 and record.spoken_text == REPLY
    audio = [c for c in tl.sink.calls if c.what == "play"]
    assert not [c for c in audio if 3.0 < c.at < 3.3]  # nothing new started while it was held


async def test_with_barge_in_off_speech_does_not_touch_the_reply():
    async with timeline(REPLY, voice_word_s=0.25, settings=DirectorSettings(barge_in="off")) as tl:
        await tl.play(*chat("hi!", 0.0), *speech("", 3.0, 3.3), until=10.0)
    assert [c.what for c in tl.sink.of("pause", "resume", "clear")] == []
    assert without_audio(tl.sink.calls)[-1] == (3.2, "end_turn", (False, REPLY))  # 0.2 + 12 words x 0.25


async def test_chat_during_a_reply_waits_for_it_and_every_turn_keeps_its_order():
    async with timeline(REPLY, voice_word_s=0.1) as tl:
        await tl.play(*chat("hello", 0.0), *chat("what are you playing?", 1.0, author="bo"), until=10.0)
    first_end = tl.sink.of("end_turn")[0].at
    second = tl.sink.of("begin_turn")[1]
    assert first_end == 1.4  # 0.2 + 12 words x 0.1: the chat at 1.0 did not cut it
    assert (second.at, second.detail) == (1.4, "bo: what are you playing?")  # no gap, no overlap
    for turn in (tl.sink.calls[: tl.sink.calls.index(tl.sink.of("end_turn")[0]) + 1],
                 tl.sink.calls[tl.sink.calls.index(second):]):
        kinds = [c.what for c in turn]
        assert kinds[0] == "begin_turn" and kinds[-1] == "end_turn"
        seqs = [c.detail[0] for c in turn if c.what == "play"]
        assert seqs == sorted(seqs)  # each sentence's audio after the one before
        assert [c.detail for c in turn if c.what == "sentence"] == [FIRST, SECOND, THIRD]
    assert [r.inputs[0].text for r in tl.records] == ["hello", "what are you playing?"]


async def test_idle_talk_after_a_quiet_spell_but_not_too_often():
    quiet = DirectorSettings(idle_after_s=10.0, idle_min_interval_s=30.0)
    async with timeline("Anyone there?", voice_word_s=0.25, settings=quiet) as tl:
        await tl.play(until=75.0)
    assert [(r.inputs[0].kind, r.inputs[0].received_at) for r in tl.records] == [
        (InputKind.IDLE, 10.0),  # ten seconds of quiet from the start
        (InputKind.IDLE, 40.6),  # thirty after the first idle line ended (10.0 + 0.1 + 2 words x 0.25)
    ]


async def test_chat_resets_the_quiet_spell():
    quiet = DirectorSettings(idle_after_s=10.0, idle_min_interval_s=10.0)
    async with timeline("Hi.", voice_word_s=0.25, settings=quiet) as tl:
        await tl.play(*[step for i in range(6) for step in chat("still here", 4.0 * i)], until=40.0)
    kinds = [(r.inputs[0].kind, r.inputs[0].received_at) for r in tl.records]
    assert kinds == [*((InputKind.CHAT, 4.0 * i) for i in range(6)), (InputKind.IDLE, 30.3)]  # 10 s after the last reply
