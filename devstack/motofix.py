"""Make moto's DynamoDB transactions atomic for stream readers, as DynamoDB's are.

moto 5.2 applies a `TransactWriteItems` operation by operation; when a condition fails it
puts back a deep copy of the table taken before. Two things go wrong for a stream reader:
the records of the cancelled transaction were appended to the stream meanwhile (a poller
could read a phantom event), and the copy brings its own stream shard, so every open shard
iterator keeps reading the old shard object, which never gets another record. The local
stack's stream poller published a phantom event and then nothing more after the first
write that lost a race (tests/integration/test_faults.py).

Here the transaction and stream reads share a lock, and after a cancelled transaction the
original shard object is put back with the cancelled records removed. Only the local stack
needs this: real DynamoDB never shows a cancelled transaction's writes.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_LOCK = threading.RLock()


def make_transactions_atomic() -> None:
    """Patch moto's backends in this process (idempotent)."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    transact = DynamoDBBackend.transact_write_items
    if getattr(transact, "_cmlfleet_atomic", False):
        return

    @functools.wraps(transact)
    def atomic_transaction(self: Any, transact_items: Any, *args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            shards = {
                name: (table.stream_shard, len(table.stream_shard.items))
                for name, table in self.tables.items()
                if getattr(table, "stream_shard", None) is not None
            }
            try:
                return transact(self, transact_items, *args, **kwargs)
            except Exception:
                for name, (shard, length) in shards.items():
                    table = self.tables.get(name)
                    if table is not None and table.stream_shard is not shard:
                        del shard.items[length:]  # the cancelled transaction's records
                        shard.table = table
                        table.stream_shard = shard  # open iterators read this object
                raise

    get_records = DynamoDBStreamsBackend.get_records

    @functools.wraps(get_records)
    def locked_get_records(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return get_records(self, *args, **kwargs)

    atomic_transaction._cmlfleet_atomic = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = atomic_transaction  # type: ignore[method-assign]
    DynamoDBStreamsBackend.get_records = locked_get_records  # type: ignore[method-assign]
