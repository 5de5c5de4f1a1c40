"""StreamWriter against a recording sink and a clock the test moves by hand."""

from __future__ import annotations

import pytest

from bot.streaming import FIRST_RENDER_DELAY_S, TYPING_MARKER, StreamWriter
from tests.fakes.sink import RecordingSink

INTERVAL_S = 1.0


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current time in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock()


def squeeze(text: str) -> str:
    """The text without any whitespace."""
    return "".join(text.split())


def words(count: int) -> list[str]:
    """Deltas as a model streams them: one word each, with its leading space."""
    return [f" word{i}" if i else "word0" for i in range(count)]


async def stream(writer: StreamWriter, deltas: list[str], clock: FakeClock, step_s: float) -> None:
    """Feed every delta, moving the clock by `step_s` before each, then finish."""
    for delta in deltas:
        clock.advance(step_s)
        await writer.feed(delta)
    await writer.finish()


# -- non-streaming sinks -------------------------------------------------------------------------


async def test_non_streaming_sink_gets_only_the_final_text(clock: FakeClock) -> None:
    sink = RecordingSink(can_stream=False)
    writer = StreamWriter(sink, clock)
    for delta in ["Hel", "lo, ", "world", "!"]:
        clock.advance(10)
        await writer.feed(delta)
    assert sink.events == []
    await writer.finish()
    assert sink.events == [("send", "1", "Hello, world!")]
    assert sink.edits == []
    assert writer.text == "Hello, world!"
    assert writer.message_ids == ["1"]


async def test_non_streaming_long_text_split_into_messages(clock: FakeClock) -> None:
    sink = RecordingSink(max_message_len=300, can_stream=False)
    writer = StreamWriter(sink, clock)
    deltas = words(200)
    await stream(writer, deltas, clock, step_s=5)
    assert len(sink.sent) > 1
    assert sink.edits == []
    assert all(len(text) <= 300 for text in sink.sent)
    assert " ".join(sink.final_texts).split() == "".join(deltas).split()
    assert writer.message_ids == [str(n) for n in range(1, len(sink.sent) + 1)]


# -- streaming sinks -----------------------------------------------------------------------------


def test_first_render_delay_is_short() -> None:
    # Long enough to save the partial write of a short answer, short enough that text shows promptly.
    assert 0 < FIRST_RENDER_DELAY_S <= 0.5


async def test_first_render_waits_the_delay_then_edits_follow_the_interval(clock: FakeClock) -> None:
    sink = RecordingSink(edit_interval_s=INTERVAL_S)
    writer = StreamWriter(sink, clock)
    clock.advance(10)  # the delay counts from the first delta, not from the writer's creation

    await writer.feed("Hel")
    assert sink.events == []
    clock.advance(FIRST_RENDER_DELAY_S / 2)
    await writer.feed("lo")
    assert sink.events == []

    clock.advance(FIRST_RENDER_DELAY_S / 2)  # exactly the delay after the first delta
    await writer.feed(",")
    assert sink.events == [("send", "1", "Hello," + TYPING_MARKER)]

    clock.advance(0.5)
    await writer.feed(" wor")
    clock.advance(0.25)
    await writer.feed("ld")
    assert sink.edits == []

    clock.advance(0.25)  # exactly one interval after the send
    await writer.feed("!")
    assert sink.edits == [("1", "Hello, world!" + TYPING_MARKER)]

    clock.advance(0.75)
    await writer.feed(" Bye.")
    assert len(sink.edits) == 1

    await writer.finish()
    assert sink.edits[-1] == ("1", "Hello, world! Bye.")
    assert sink.final_texts == ["Hello, world! Bye."]
    assert len(sink.sent) == 1


@pytest.mark.parametrize("interval_s", [0.0, INTERVAL_S])
async def test_answer_finished_within_the_delay_is_sent_once_and_never_edited(
    clock: FakeClock, interval_s: float
) -> None:
    sink = RecordingSink(edit_interval_s=interval_s)
    writer = StreamWriter(sink, clock)
    await writer.feed("Hel")
    for delta in ["lo", ", ", "world"]:
        clock.advance(FIRST_RENDER_DELAY_S / 4)
        await writer.feed(delta)
    clock.advance(FIRST_RENDER_DELAY_S / 4 - 1e-6)  # the last delta comes just before the delay ends
    await writer.feed("!")
    assert sink.events == []
    await writer.finish()
    assert sink.events == [("send", "1", "Hello, world!")]
    assert sink.edits == []
    assert writer.message_ids == ["1"]


async def test_long_answer_finished_within_the_delay_is_only_sent(clock: FakeClock) -> None:
    sink = RecordingSink(max_message_len=300, edit_interval_s=0.0)
    writer = StreamWriter(sink, clock)
    deltas = words(200)
    for delta in deltas:  # all at once: a fast model
        await writer.feed(delta)
    assert sink.events == []
    await writer.finish()
    assert len(sink.sent) > 1
    assert sink.edits == []
    assert all(not text.endswith(TYPING_MARKER) for text in sink.sent)
    assert " ".join(sink.final_texts).split() == "".join(deltas).split()


async def test_interval_counts_from_the_last_write(clock: FakeClock) -> None:
    sink = RecordingSink(edit_interval_s=INTERVAL_S)
    writer = StreamWriter(sink, clock)
    await writer.feed("a")
    clock.advance(FIRST_RENDER_DELAY_S)
    await writer.feed(" b")
    assert sink.events == [("send", "1", "a b" + TYPING_MARKER)]
    for step in range(1, 21):
        clock.advance(0.25)
        await writer.feed(f" {step}")
    # 5 s of deltas every 0.25 s after the send: one write per second of fake time.
    assert len(sink.edits) == 5
    assert len(sink.sent) == 1


async def test_marker_on_in_progress_edits_never_in_final_texts(clock: FakeClock) -> None:
    sink = RecordingSink(max_message_len=300, edit_interval_s=INTERVAL_S)
    writer = StreamWriter(sink, clock)
    first, *rest = words(150)
    await writer.feed(first)
    assert sink.events == []  # within the first-render delay
    for delta in rest:
        clock.advance(0.5)
        await writer.feed(delta)
        *earlier, newest = sink.final_texts
        assert newest.endswith(TYPING_MARKER)
        assert all(not text.endswith(TYPING_MARKER) for text in earlier)
    assert len(sink.sent) > 1
    assert len(sink.edits) > 5
    assert all(text.endswith(TYPING_MARKER) for text in sink.sent)

    await writer.finish()
    assert all(TYPING_MARKER.strip() not in text for text in sink.final_texts)
    assert " ".join(sink.final_texts).split() == writer.text.split()


async def test_rollover_before_the_limit_and_final_texts_join_to_the_answer(clock: FakeClock) -> None:
    limit = 300
    sink = RecordingSink(max_message_len=limit, edit_interval_s=0.0)
    writer = StreamWriter(sink, clock)
    deltas = words(250)
    await stream(writer, deltas, clock, step_s=0.01)

    assert len(sink.final_texts) >= 5
    # The sink refuses over-long texts, so every write fitted; the final texts too.
    assert all(len(text) <= limit for text in sink.final_texts)
    assert " ".join(sink.final_texts).split() == "".join(deltas).split()
    assert writer.message_ids == list(sink.messages)
    # Once the next message exists, an earlier one is never touched again.
    for index, event in enumerate(sink.events):
        if event[0] == "send" and event[1] != "1":
            previous = str(int(event[1]) - 1)
            assert all(later[1] != previous for later in sink.events[index:] if later[0] == "edit")


async def test_rollover_keeps_code_block_fences_balanced(clock: FakeClock) -> None:
    sink = RecordingSink(max_message_len=300, edit_interval_s=0.0)
    writer = StreamWriter(sink, clock)
    code = [f"\nrow_{i} = make_row({i})" for i in range(40)]
    await stream(writer, ["Code:\n\n```python", *code, "\n```\n\nDone."], clock, step_s=0.01)
    texts = sink.final_texts
    assert len(texts) > 2
    assert texts[0].startswith("Code:")
    assert all(text.count("```") % 2 == 0 for text in texts)
    assert all(text.startswith("```python\n") for text in texts[1:-1])
    rows = [line for text in texts for line in text.split("\n") if line.startswith("row_")]
    assert rows == [line.strip() for line in code]


async def test_no_edit_when_text_unchanged(clock: FakeClock) -> None:
    sink = RecordingSink(edit_interval_s=INTERVAL_S)
    writer = StreamWriter(sink, clock)
    await writer.feed("Same")
    clock.advance(FIRST_RENDER_DELAY_S)
    await writer.feed("")
    assert sink.events == [("send", "1", "Same" + TYPING_MARKER)]
    clock.advance(5)
    await writer.feed("")
    clock.advance(5)
    await writer.feed("")
    assert sink.edits == []
    await writer.finish()
    await writer.finish()
    # One edit to drop the marker; the second finish changes nothing, so sends nothing.
    assert sink.edits == [("1", "Same")]


async def test_whitespace_only_text_writes_nothing_and_starts_no_interval(clock: FakeClock) -> None:
    sink = RecordingSink(edit_interval_s=INTERVAL_S)
    writer = StreamWriter(sink, clock)
    await writer.feed("  ")  # the first delta starts the first-render delay
    clock.advance(FIRST_RENDER_DELAY_S)
    await writer.feed(" ")  # nothing to show yet, so nothing written and the interval not started
    assert sink.events == []
    await writer.feed("Answer")
    assert sink.events == [("send", "1", "   Answer" + TYPING_MARKER)]
    await writer.finish()
    assert sink.final_texts == ["   Answer"]


@pytest.mark.parametrize("can_stream", [True, False])
async def test_whitespace_only_text_sends_nothing(clock: FakeClock, can_stream: bool) -> None:
    sink = RecordingSink(can_stream=can_stream)
    writer = StreamWriter(sink, clock)
    for delta in ["", " ", "\n\n", "\t"]:
        clock.advance(5)
        await writer.feed(delta)
    await writer.finish()
    assert sink.events == []
    assert writer.message_ids == []


async def test_nothing_fed_sends_nothing(clock: FakeClock) -> None:
    sink = RecordingSink()
    writer = StreamWriter(sink, clock)
    await writer.finish()
    assert sink.events == []


async def test_failed_preview_is_skipped_and_the_final_send_propagates(clock: FakeClock) -> None:
    sink = RecordingSink(fail_on_send=ConnectionError("platform down"))
    writer = StreamWriter(sink, clock)
    await writer.feed("Hello")  # within the delay: nothing sent yet
    clock.advance(FIRST_RENDER_DELAY_S)
    await writer.feed(" there")  # the preview fails: logged, the answer goes on
    clock.advance(10)
    await writer.feed("!")  # no more previews after a failed one
    assert writer.text == "Hello there!"
    assert writer.message_ids == []
    with pytest.raises(ConnectionError, match="platform down"):
        await writer.finish()


async def test_failed_final_send_within_the_delay_propagates(clock: FakeClock) -> None:
    sink = RecordingSink(fail_on_send=ConnectionError("platform down"))
    writer = StreamWriter(sink, clock)
    await writer.feed("Hello")
    with pytest.raises(ConnectionError, match="platform down"):
        await writer.finish()
    assert writer.message_ids == []
