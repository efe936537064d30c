"""LangGraph's Postgres checkpointers, made to keep every channel value encrypted (the ``postgres`` extra).

Use them through :func:`agentgraph.checkpointing.postgres_checkpointer` (and its async twin), which
set the encrypted serializer and create the tables; this module imports
``langgraph-checkpoint-postgres``, so it loads only where that is installed.

``PostgresSaver`` keeps str, int, float and bool channel values in the checkpoint's JSONB column,
past the serializer; :func:`split_plain_values` takes them out for the (encrypted) blobs table:

    >>> from agentgraph.postgres_checkpoint import split_plain_values
    >>> checkpoint = {"channel_values": {"text": "card 4111 1111 1111 1111", "turns": 2, "messages": ["hi"]}}
    >>> kept, plain, versions = split_plain_values(checkpoint, {"text": "v2", "messages": "v2"})
    >>> kept["channel_values"], sorted(plain), versions
    ({'messages': ['hi']}, ['text', 'turns'], {'text': 'v2'})
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver


def split_plain_values(
    checkpoint: Checkpoint, new_versions: ChannelVersions
) -> tuple[Checkpoint, dict[str, Any], ChannelVersions]:
    """``checkpoint`` without the plain values (str, int, float, bool) ``PostgresSaver`` would keep in the
    clear; those values; and their new versions (the blobs to write). A plain value whose version did not
    change was written as a blob when it did."""
    plain = {
        channel: value for channel, value in checkpoint["channel_values"].items()
        if isinstance(value, str | int | float | bool)
    }  # fmt: skip
    if not plain:
        return checkpoint, {}, {}
    rest = {channel: value for channel, value in checkpoint["channel_values"].items() if channel not in plain}
    versions = {channel: version for channel, version in new_versions.items() if channel in plain}
    return {**checkpoint, "channel_values": rest}, plain, versions


def plain_values_as_blobs(
    saver: PostgresSaver | AsyncPostgresSaver,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    new_versions: ChannelVersions,
) -> tuple[Checkpoint, list[tuple]]:
    """``checkpoint`` without its plain values, and the (encrypted) blob rows ``saver`` writes for them."""
    checkpoint, plain, versions = split_plain_values(checkpoint, new_versions)
    if not versions:
        return checkpoint, []
    configurable = config["configurable"]
    return checkpoint, saver._dump_blobs(configurable["thread_id"], configurable["checkpoint_ns"], plain, versions)


class EncryptedPostgresSaver(PostgresSaver):
    """LangGraph's ``PostgresSaver`` that keeps every channel value in the blobs table, through its serializer.

    ``PostgresSaver`` writes str, int, float and bool channel values into the checkpoint's JSONB
    column as they are, past the serializer, so a customer's message (a str) would sit there in
    the clear beside the encrypted blobs. This saver writes them as blobs too; reading is
    ``PostgresSaver``'s own (a checkpoint's values are its inline ones and its blobs).
    """

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        checkpoint, rows = plain_values_as_blobs(self, config, checkpoint, new_versions)
        if rows:
            with self._cursor(pipeline=True) as cursor:
                cursor.executemany(self.UPSERT_CHECKPOINT_BLOBS_SQL, rows)
        return super().put(config, checkpoint, metadata, new_versions)


class AsyncEncryptedPostgresSaver(AsyncPostgresSaver):
    """:class:`EncryptedPostgresSaver` for asyncio (``AsyncPostgresSaver``): every channel value a blob."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        checkpoint, rows = plain_values_as_blobs(self, config, checkpoint, new_versions)
        if rows:
            async with self._cursor(pipeline=True) as cursor:
                await cursor.executemany(self.UPSERT_CHECKPOINT_BLOBS_SQL, rows)
        return await super().aput(config, checkpoint, metadata, new_versions)
