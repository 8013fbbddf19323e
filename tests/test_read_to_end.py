"""Unit tests of :func:`wearwatch.transport.read_to_end`, the one way tools read a partition to its end before a
deadline (the data keys, the enrolment, the gateway tokens, a patient's alerts), on a stand-in consumer. The stack
tests of its callers (tests/integration/test_erasure_flow.py, test_enrollment_flow.py) read the real broker."""

from __future__ import annotations

from collections import namedtuple
from typing import Any, ClassVar

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

import wearwatch.transport as transport
from wearwatch.config import load_settings
from wearwatch.errors import StackUnavailable
from wearwatch.transport import read_to_end

Record = namedtuple("Record", "topic partition offset key value")
SETTINGS = load_settings({})


class FakeConsumer:
    """A partition of ``records`` handed out ``per_poll`` at a time; ``stuck``: polls return nothing."""

    instances: ClassVar[list[FakeConsumer]] = []

    def __init__(self, records: list[Record], per_poll: int = 2, partitions: set[int] | None = None,
                 stuck: bool = False, fail_poll: Exception | None = None, fail_end: Exception | None = None) -> None:
        self.records, self.per_poll, self.partitions = records, per_poll, partitions
        self.stuck, self.fail_poll, self.fail_end = stuck, fail_poll, fail_end
        self.pos = 0
        self.assigned: list[TopicPartition] = []
        self.closed = False
        self.polls = 0
        FakeConsumer.instances.append(self)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.pos = 0

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int | None = None) -> dict[TopicPartition, int]:
        assert timeout_ms is not None and timeout_ms > 0  # bounded by the deadline
        if self.fail_end is not None:
            raise self.fail_end
        return {tps[0]: len(self.records)}

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self.pos

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Record]]:
        self.polls += 1
        if self.fail_poll is not None:
            raise self.fail_poll
        if self.stuck:
            return {}
        batch = self.records[self.pos:self.pos + self.per_poll]
        self.pos += len(batch)
        return {self.assigned[0]: batch} if batch else {}

    def close(self) -> None:
        self.closed = True


def use(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> list[Record]:
    records = kw.pop("records", [Record("t", 0, i, b"k%d" % i, b"v%d" % i) for i in range(5)])
    FakeConsumer.instances.clear()
    monkeypatch.setattr(transport, "KafkaConsumer", lambda **cfg: FakeConsumer(records, **kw))
    return records


def test_every_record_up_to_the_end_in_order_then_the_consumer_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    records = use(monkeypatch)
    got = list(read_to_end(SETTINGS, "t", 0, client_id="c", timeout_s=5))
    c = FakeConsumer.instances[0]
    assert got == records
    assert c.assigned == [TopicPartition("t", 0)]
    assert c.polls == 3  # 2 + 2 + 1
    assert c.closed


def test_an_empty_partition_is_not_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, records=[])
    assert list(read_to_end(SETTINGS, "t", 0, client_id="c", timeout_s=5)) == []
    assert FakeConsumer.instances[0].polls == 0 and FakeConsumer.instances[0].closed


def test_a_partition_chosen_from_the_partition_count(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, partitions={0, 1, 2, 3})
    counts: list[int] = []

    def choose(n: int) -> int:
        counts.append(n)
        return 3

    assert len(list(read_to_end(SETTINGS, "t", choose, client_id="c", timeout_s=5))) == 5
    assert counts == [4]
    assert FakeConsumer.instances[0].assigned == [TopicPartition("t", 3)]


def test_a_topic_that_does_not_exist_has_no_records(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, partitions=None)
    assert list(read_to_end(SETTINGS, "t", lambda n: 0, client_id="c", timeout_s=5)) == []
    assert FakeConsumer.instances[0].assigned == [] and FakeConsumer.instances[0].closed


def test_past_the_deadline_it_raises_stack_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, stuck=True)
    with pytest.raises(StackUnavailable, match="could not read t to its end in 0 s"):
        list(read_to_end(SETTINGS, "t", 0, client_id="c", timeout_s=0.2))
    assert FakeConsumer.instances[0].polls >= 1 and FakeConsumer.instances[0].closed


@pytest.mark.parametrize(("where", "cause", "says"), [
    ("fail_end", KafkaTimeoutError("no answer"), "could not read t to its end .*KafkaTimeoutError"),
    ("fail_poll", KafkaConnectionError("gone"), "Kafka at 127.0.0.1:9092"),
])
def test_a_client_error_is_stack_unavailable_from_it(monkeypatch: pytest.MonkeyPatch, where: str, cause: Exception,
                                                     says: str) -> None:
    """A timed-out end offset (said as a read past its deadline), or any client error while reading."""
    use(monkeypatch, **{where: cause})
    with pytest.raises(StackUnavailable, match=says) as info:
        list(read_to_end(SETTINGS, "t", 0, client_id="c", timeout_s=5))
    assert info.value.__cause__ is cause
    assert FakeConsumer.instances[0].closed


def test_stopping_early_closes_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    records = use(monkeypatch)
    it = read_to_end(SETTINGS, "t", 0, client_id="c", timeout_s=5)
    assert next(it) == records[0]
    assert not FakeConsumer.instances[0].closed
    it.close()
    assert FakeConsumer.instances[0].closed


def test_a_consumer_that_cannot_start_is_stack_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    cause = KafkaConnectionError("no broker")

    def refuse(**cfg: Any) -> None:
        raise cause

    monkeypatch.setattr(transport, "KafkaConsumer", refuse)
    with pytest.raises(StackUnavailable) as info:
        list(read_to_end(SETTINGS, "t", 0, client_id="c", timeout_s=5))
    assert info.value.__cause__ is cause
