"""Checkpointers that know agentgraph's state types, and keep what they store encrypted.

LangGraph's serializer restores pydantic objects from a checkpoint only for
modules it was told to trust (it warns today and will refuse later). The nodes
put their records in state (decisions, handoffs, validation reports, kept
chunks, loop observations), and your own schemas join them: :func:`state_serializer`
allows exactly those types, and :func:`sqlite_checkpointer` is a durable
``SqliteSaver`` that uses it, so threads and pending approvals survive a restart.

A thread's state holds the customer's own words, card numbers and e-mail
addresses included, and a resumed graph must get them back exactly (a tool
approved with an address must run with that address, under the idempotency key
of those arguments). So :func:`sqlite_checkpointer` encrypts every checkpoint
and pending write with AES-256-GCM (LangGraph's ``EncryptedSerializer``)
rather than redacting them: the file holds no personal data in the clear, and
the state comes back as it was. The key is ``AGENTGRAPH_CHECKPOINT_KEY`` (32
bytes, URL-safe base64; :func:`new_checkpoint_key` makes one) when set, else a
key file beside the database, created on first use and readable by its owner
only. Keep the key out of the data folder's backups (set the variable from a
secret store); without it the threads cannot be read. Checkpoints written
before encryption are still read as they are. The checkpoint *metadata*
column (LangGraph's, JSON in the clear) holds the run config's string
metadata: put no personal data there.

Workers on several machines share threads through :func:`postgres_checkpointer`
(``langgraph-checkpoint-postgres``, the ``postgres`` extra; and
:func:`async_postgres_checkpointer`): the same encryption, its key from
``AGENTGRAPH_CHECKPOINT_KEY`` alone (no key file serves several machines), and
every channel value in the encrypted blobs, where LangGraph's ``PostgresSaver``
would keep str, int, float and bool values in a JSONB column in the clear
(:mod:`agentgraph.postgres_checkpoint`).

Example:
    >>> from langgraph.checkpoint.memory import InMemorySaver
    >>> from pydantic import BaseModel
    >>> from agentgraph.checkpointing import encrypted_serializer, new_checkpoint_key, state_serializer
    >>> class Ticket(BaseModel):  # one of your own types in state
    ...     order_id: str | None = None
    >>> saver = InMemorySaver(serde=state_serializer(Ticket))
    >>> serde = encrypted_serializer(new_checkpoint_key(), Ticket)
    >>> kind, blob = serde.dumps_typed({"text": "card 4111 1111 1111 1111"})
    >>> kind, b"4111" in blob, serde.loads_typed((kind, blob))
    ('msgpack+aesgcm', False, {'text': 'card 4111 1111 1111 1111'})
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from agentgraph.clarification import Clarification
from agentgraph.errors import CheckpointDecryptionError, ConfigError
from agentgraph.llm import HumanHandoff
from agentgraph.nodes.context_pruner import KeptChunk
from agentgraph.nodes.loop import ActResult, Observation
from agentgraph.nodes.output_validator import Span, ValidationReport, ValidationStep, Violation
from agentgraph.records.decisions import Decision
from agentgraph.routing.steps import RecognisedStep
from agentgraph.write_safety import WriteConsent

if TYPE_CHECKING:
    from agentgraph.postgres_checkpoint import AsyncEncryptedPostgresSaver, EncryptedPostgresSaver

NODE_STATE_TYPES: tuple[type, ...] = (
    Decision, HumanHandoff, KeptChunk, ActResult, Observation, ValidationReport, ValidationStep, Violation, Span,
    Clarification, WriteConsent, RecognisedStep,
)  # fmt: skip
"""Every type an agentgraph node writes into graph state."""

CHECKPOINT_KEY_ENV = "AGENTGRAPH_CHECKPOINT_KEY"
"""The environment variable that holds the checkpoint key (32 bytes, URL-safe base64); it wins over a key file."""

_KEY_BYTES = 32
_NONCE_BYTES = 12


def state_serializer(*schemas: type) -> JsonPlusSerializer:
    """A serializer that restores the nodes' state types and ``schemas`` (your pydantic models in state)."""
    return JsonPlusSerializer(
        allowed_msgpack_modules=[(t.__module__, t.__qualname__) for t in (*NODE_STATE_TYPES, *schemas)]
    )


class AESGCMCipher:
    """AES-256-GCM for LangGraph's ``EncryptedSerializer``: a fresh nonce per blob, and tampering detected."""

    name = "aesgcm"

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(_NONCE_BYTES)
        return self.name, nonce + self._aead.encrypt(nonce, plaintext, None)

    def decrypt(self, ciphername: str, ciphertext: bytes) -> bytes:
        if ciphername != self.name:
            raise CheckpointDecryptionError(f"a checkpoint is encrypted with {ciphername!r}; only {self.name} is known")
        try:
            return self._aead.decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], None)
        except InvalidTag:
            raise CheckpointDecryptionError(
                f"a checkpoint does not decrypt with this key: it was written with another one, or altered. Set "
                f"{CHECKPOINT_KEY_ENV} (or restore the key file) to the key the threads were written with"
            ) from None


def encrypted_serializer(key: bytes, *schemas: type) -> EncryptedSerializer:
    """:func:`state_serializer` for ``schemas``, its output encrypted with ``key`` (32 bytes)."""
    return EncryptedSerializer(AESGCMCipher(key), state_serializer(*schemas))


def new_checkpoint_key() -> bytes:
    """A fresh random key; ``base64.urlsafe_b64encode(key)`` is the form :data:`CHECKPOINT_KEY_ENV` takes."""
    return AESGCM.generate_key(bit_length=8 * _KEY_BYTES)


def checkpoint_key(key_file: str | Path | None) -> bytes:
    """The key :data:`CHECKPOINT_KEY_ENV` holds, else the one in ``key_file`` (created, owner-only, on first use).

    ``key_file=None`` (a database that workers on several machines share, which no key file beside it can
    serve) needs the variable: without it, :class:`~agentgraph.errors.ConfigError`.
    """
    if encoded := os.environ.get(CHECKPOINT_KEY_ENV):
        return _decode_key(encoded, CHECKPOINT_KEY_ENV)
    if key_file is None:
        raise ConfigError(
            f"checkpoints in a shared database are encrypted with the key in {CHECKPOINT_KEY_ENV}, the same on every "
            "worker: set it to 32 random bytes in URL-safe base64, e.g. the output of "
            "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
        )
    key_file = Path(key_file)
    if not key_file.exists():
        _create_key_file(key_file)
    return _decode_key(key_file.read_text(encoding="ascii").strip(), str(key_file))


def _decode_key(encoded: str, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(encoded.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise ConfigError(
            f"{source} must hold a {_KEY_BYTES}-byte key in URL-safe base64, e.g. the output of "
            "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
        )
    return key


def _create_key_file(key_file: Path) -> None:
    # Written aside and linked into place, so a process starting at the same time never reads half a key:
    # the first link wins and the other process reads the winner's key.
    key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor, draft = tempfile.mkstemp(dir=key_file.parent, prefix=".key-")  # created mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as out:
            out.write(base64.urlsafe_b64encode(new_checkpoint_key()).decode("ascii"))
        os.link(draft, key_file)
    except FileExistsError:
        pass
    finally:
        os.unlink(draft)


def sqlite_checkpointer(path: str | Path, *schemas: type, key: bytes | None = None) -> SqliteSaver:
    """A durable checkpointer in the SQLite file ``path`` (created with its folder) that restores ``schemas``.

    Checkpoints and pending writes are encrypted with ``key`` (default: :func:`checkpoint_key` of the key
    file beside ``path``, e.g. ``checkpoints.key`` for ``checkpoints.db``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = key if key is not None else checkpoint_key(path.with_suffix(".key"))
    connection = sqlite3.connect(str(path), check_same_thread=False)
    return SqliteSaver(connection, serde=encrypted_serializer(key, *schemas))


_CONNECTION_OPTIONS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0}
"""What LangGraph's Postgres savers need of their connection (with ``row_factory=dict_row``)."""


def postgres_checkpointer(url: str, *schemas: type, key: bytes | None = None) -> EncryptedPostgresSaver:
    """A durable checkpointer in the PostgreSQL database ``url`` that restores ``schemas``; its tables are set up.

    Checkpoints and pending writes are encrypted with ``key`` (default: :func:`checkpoint_key` of no key
    file, i.e. :data:`CHECKPOINT_KEY_ENV`, which every worker sharing the database must set alike). Its
    tables are created, or migrated, under the setup lock of :mod:`agentgraph.postgres`, so workers may
    start at once. It holds one connection (``saver.conn``; close it when done); threads of one process
    take turns on it.
    """
    from psycopg import Connection
    from psycopg.rows import dict_row

    from agentgraph.postgres import holding_setup_lock
    from agentgraph.postgres_checkpoint import EncryptedPostgresSaver

    key = key if key is not None else checkpoint_key(None)
    connection = Connection.connect(url, row_factory=dict_row, **_CONNECTION_OPTIONS)
    saver = EncryptedPostgresSaver(connection, serde=encrypted_serializer(key, *schemas))
    with holding_setup_lock(connection):
        saver.setup()
    return saver


async def async_postgres_checkpointer(
    url: str, *schemas: type, key: bytes | None = None
) -> AsyncEncryptedPostgresSaver:
    """:func:`postgres_checkpointer` for asyncio graphs (``ainvoke``, ``astream``): the same tables and key."""
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row

    from agentgraph.postgres import setup_lock
    from agentgraph.postgres_checkpoint import AsyncEncryptedPostgresSaver

    key = key if key is not None else checkpoint_key(None)
    connection = await AsyncConnection.connect(url, row_factory=dict_row, **_CONNECTION_OPTIONS)
    saver = AsyncEncryptedPostgresSaver(connection, serde=encrypted_serializer(key, *schemas))
    with setup_lock(url):  # on a connection of its own, held while this one migrates
        await saver.setup()
    return saver


def checkpoint_location(checkpointer: BaseCheckpointSaver) -> str:
    """Where ``checkpointer`` keeps its threads, for messages: a SQLite saver's file, a Postgres saver's database,
    else its class."""
    if isinstance(checkpointer, SqliteSaver):
        with checkpointer.cursor(transaction=False) as cursor:
            file = cursor.execute("PRAGMA database_list").fetchone()[2]
        return file or "an in-memory SQLite database"
    info = getattr(getattr(checkpointer, "conn", None), "info", None)  # a psycopg connection's (Postgres savers)
    if info is not None and hasattr(info, "dbname"):
        return f"the PostgreSQL database {info.dbname} on {info.host}:{info.port}"
    return f"the graph's checkpointer ({type(checkpointer).__name__})"
