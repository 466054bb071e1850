"""Delivering events to the handlers as AWS would: from rule tap queues and the table stream."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from devstack.lambdas import LocalFunction

log = logging.getLogger("devstack.dispatcher")


class Worker(threading.Thread):
    """A daemon thread that repeats `poll_once` until stopped, surviving its errors."""

    def __init__(self, name: str, idle_wait: float) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self._idle_wait = idle_wait

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                busy = self.poll_once()
            except Exception:
                log.exception("%s failed; retrying", self.name)
                busy = False
            if not busy:
                self.stopping.wait(self._idle_wait)

    def poll_once(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()


class RuleTapDrainer(Worker):
    """Drains one tap queue (an EventBridge rule's target) into its function.

    Like EventBridge's asynchronous invoke: a failing event is retried (the message comes
    back after its visibility timeout) up to the rule's retry count, then dropped with a log.
    """

    def __init__(
        self, sqs: Any, queue_url: str, function: LocalFunction, account: str, max_retries: int
    ) -> None:
        super().__init__(f"tap-{function.logical_id}", idle_wait=0.0)
        self._sqs, self._queue_url, self._function = sqs, queue_url, function
        self._account, self._max_retries = account, max_retries

    def poll_once(self) -> bool:
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["ApproximateReceiveCount"],
        )
        messages = response.get("Messages", [])
        for message in messages:
            event = json.loads(message["Body"])
            event.setdefault("account", self._account)  # moto's envelope lacks it
            receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            try:
                self._function.invoke(event)
            except Exception:
                if receives <= self._max_retries:
                    log.exception("%s failed; EventBridge would retry", self._function.name)
                    continue
                log.exception("%s failed %d times; event dropped", self._function.name, receives)
            self._sqs.delete_message(
                QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
        return bool(messages)


class StreamPoller(Worker):
    """Reads a DynamoDB stream and invokes the function with batches, like an event source
    mapping with `ReportBatchItemFailures`: a batch resumes from its first failed record."""

    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        function: LocalFunction,
        *,
        region: str,
        batch_size: int,
        max_retries: int,
        on_failure: Any = None,
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(f"stream-{function.logical_id}", idle_wait=poll_interval)
        self._streams, self._arn, self._function = streams, stream_arn, function
        self._region, self._batch_size, self._max_retries = region, batch_size, max_retries
        self._on_failure = on_failure
        self._iterators: dict[str, str] = {}
        self._attempts = 0

    def poll_once(self) -> bool:
        if not self._iterators:
            self._open_shards()
        busy = False
        for shard_id, iterator in list(self._iterators.items()):
            response = self._streams.get_records(ShardIterator=iterator, Limit=self._batch_size)
            records = response.get("Records", [])
            if records:
                busy = True
                self._deliver(shard_id, records)
                if shard_id in self._iterators and self._iterators[shard_id] != iterator:
                    continue
            self._iterators[shard_id] = response["NextShardIterator"]
        return busy

    def _open_shards(self) -> None:
        description = self._streams.describe_stream(StreamArn=self._arn)["StreamDescription"]
        for shard in description["Shards"]:
            self._iterators[shard["ShardId"]] = self._streams.get_shard_iterator(
                StreamArn=self._arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]

    def _deliver(self, shard_id: str, records: list[dict[str, Any]]) -> None:
        event = {
            "Records": [
                {**record, "eventSourceARN": self._arn, "awsRegion": self._region}
                for record in records
            ]
        }
        try:
            result = self._function.invoke(event) or {}
            failures = [f["itemIdentifier"] for f in result.get("batchItemFailures", [])]
        except Exception:
            log.exception("%s failed on a whole batch", self._function.name)
            failures = [records[0]["dynamodb"]["SequenceNumber"]]
        if not failures:
            self._attempts = 0
            return
        self._attempts += 1
        first = min(failures, key=int)
        if self._attempts > self._max_retries:
            log.error("%s gave up on record %s", self._function.name, first)
            if self._on_failure:
                self._on_failure(
                    shard_id,
                    [r for r in records if int(r["dynamodb"]["SequenceNumber"]) >= int(first)],
                )
            self._attempts = 0
            return
        # Resume at the first failed record on the next poll, as Lambda does.
        self._iterators[shard_id] = self._streams.get_shard_iterator(
            StreamArn=self._arn,
            ShardId=shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            SequenceNumber=first,
        )["ShardIterator"]
        self.stopping.wait(min(0.1 * 2**self._attempts, 2.0))
