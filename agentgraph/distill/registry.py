"""Which artifact serves each node role: promotions, rollbacks and their lineage (``agentgraph models``).

A gate (:func:`~agentgraph.distill.gate.promote`) writes its decision into the
artifact's manifest; the :class:`ModelRegistry` is what a graph reads at start to
know which artifact to load for a role (``router``, ``extract``, or any role a
later node distils). Registering an artifact checks that its gate accepted it
(refused otherwise, unless forced), records its lineage (the dataset it was
trained on, its base model, the gate's figures) and the manifest's hash, and
keeps every earlier entry so :meth:`ModelRegistry.rollback` can restore the one
before. Each switch is a :class:`~agentgraph.records.decisions.Decision` of kind
``promote`` or ``rollback`` in the decision log given.

The registry is one JSON file, ``registry.json``, in its folder, replaced
atomically on every change.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from agentgraph.distill.registry import ModelRegistry, UnpromotedArtifactError
    >>> root = Path(tempfile.mkdtemp())
    >>> artifact = root / "extractor-v1"
    >>> artifact.mkdir()
    >>> manifest = {"role": "extract", "base_model": "SmolLM2-135M-Instruct", "dataset": {"sha256": "ab12"},
    ...             "promotion": {"decision": "accepted", "agreement": 0.998, "threshold": 0.92}}
    >>> _ = (artifact / "manifest.json").write_text(json.dumps(manifest))
    >>> registry = ModelRegistry(root / "registry")
    >>> entry = registry.promote("extract", artifact)
    >>> registry.current("extract").path == str(artifact.resolve()), entry.lineage["dataset_sha256"]
    (True, 'ab12')
    >>> registry.rollback("extract") is None  # nothing was promoted before it: back to the default
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentgraph.distill.train import MANIFEST, DistillError, read_manifest
from agentgraph.records.decisions import Decision, DecisionLog, log_decision

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
"""Held (``flock``) while a process reads, changes and writes the registry."""


class UnpromotedArtifactError(DistillError):
    """The artifact's gate did not accept it (or it was never gated): it is not registered unless forced."""


class ChangedArtifactError(DistillError):
    """The artifact's manifest changed after it was promoted: it is not what the gate accepted."""


class RegistryEntry(BaseModel):
    """One artifact registered for a role."""

    role: str = Field(description="the node role it serves: router, extract, ...")
    path: str = Field(description="the artifact's folder, resolved")
    trained_for: str | None = Field(description="the role in the artifact's manifest (route, extract, ...)")
    manifest_sha256: str = Field(description="the manifest as promoted; a changed one is refused at load")
    lineage: dict[str, Any] = Field(description="dataset hash and folder, base model, the gate's figures")
    promoted_at: str
    forced: bool = False
    reason: str = Field(default="", description="why it was registered: the gate's reason, or the one given")


class CanaryEntry(BaseModel):
    """A candidate serving a share of a role's traffic beside the current artifact, until it is judged."""

    entry: RegistryEntry
    share: float = Field(gt=0.0, le=1.0, description="the part of the traffic it serves")
    started_at: str


class RoleHistory(BaseModel):
    """Every entry a role had, oldest first, which one serves (None: the default), and its canary if any."""

    entries: list[RegistryEntry] = Field(default_factory=list)
    current: int | None = None
    previous: list[int | None] = Field(default_factory=list, description="what served before each switch")
    canary: CanaryEntry | None = None


class RegistryContents(BaseModel):
    roles: dict[str, RoleHistory] = Field(default_factory=dict)


def manifest_sha256(folder: str | os.PathLike[str]) -> str:
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ModelRegistry:
    """The promoted artifact of each role, kept in ``folder/registry.json``.

    Args:
        folder: where the registry lives (a graph's data directory keeps it in ``models/``).
        decision_log: where each promotion and rollback is recorded as a decision.
    """

    def __init__(self, folder: str | os.PathLike[str], *, decision_log: DecisionLog | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / REGISTRY_FILE
        self.decision_log = decision_log
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.folder)!r})"

    def read(self) -> RegistryContents:
        if not self.path.is_file():
            return RegistryContents()
        try:
            return RegistryContents.model_validate_json(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DistillError(f"{self.path} is not a model registry ({exc}); move it away to start a new one") from exc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The registry to this caller alone for one read, change and write: against this process's threads (a
        lock) and other processes (an exclusive ``flock`` on :data:`LOCK_FILE`; the kernel drops it when its
        holder dies). Without it, two promotions at once would each write what it read, and one would be lost."""
        import fcntl  # POSIX only; imported here so reading a registry works everywhere

        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock, (self.folder / LOCK_FILE).open("ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, contents: RegistryContents) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{REGISTRY_FILE}.{os.getpid()}.tmp")
        staging.write_text(contents.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(staging, self.path)

    def current(self, role: str) -> RegistryEntry | None:
        """The entry serving ``role``, or None when the default serves it."""
        history = self.read().roles.get(role)
        return None if history is None or history.current is None else history.entries[history.current]

    def promote(
        self, role: str, artifact: str | os.PathLike[str], *, force: bool = False, reason: str | None = None
    ) -> RegistryEntry:
        """Make ``artifact`` the one serving ``role``.

        Refused with :class:`UnpromotedArtifactError` unless the artifact's latest gate
        decision (``manifest["promotion"]``) accepted it, or ``force`` (say why in ``reason``).
        """
        entry = self._entry(role, artifact, force=force, reason=reason)
        with self._locked():
            contents = self.read()
            self._switch(contents.roles.setdefault(role, RoleHistory()), entry)
            self._write(contents)
        self._log("promote", role, entry, forced=entry.forced)
        return entry

    def start_canary(
        self,
        role: str,
        artifact: str | os.PathLike[str],
        *,
        share: float,
        force: bool = False,
        reason: str | None = None,
    ) -> CanaryEntry:
        """Let ``artifact`` serve ``share`` of ``role``'s traffic beside the current one, until
        :meth:`end_canary` (:func:`~agentgraph.distill.canary.judge_canary` calls it by rule).

        The same gate check as :meth:`promote`; a canary already running for the role is replaced.
        """
        canary = CanaryEntry(entry=self._entry(role, artifact, force=force, reason=reason), share=share,
                             started_at=_now())  # fmt: skip
        with self._locked():
            contents = self.read()
            history = contents.roles.setdefault(role, RoleHistory())
            replaced = history.canary
            history.canary = canary
            self._write(contents)
        self._log("canary", role, canary.entry, share=share, forced=canary.entry.forced,
                  replaced=None if replaced is None else replaced.entry.path)  # fmt: skip
        return canary

    def canary(self, role: str) -> CanaryEntry | None:
        """The canary running for ``role``, if any."""
        history = self.read().roles.get(role)
        return None if history is None else history.canary

    def end_canary(self, role: str, *, promote: bool, reason: str, figures: dict[str, Any] | None = None) -> None:
        """End ``role``'s canary: its candidate serves the whole traffic (``promote``) or none of it (a rollback).

        Either is a decision in the log, with ``reason`` and the ``figures`` it was judged on.
        """
        with self._locked():
            contents = self.read()
            history = contents.roles.get(role)
            if history is None or history.canary is None:
                raise DistillError(
                    f"{self} has no canary running for {role!r}: start one with `agentgraph models canary`"
                )
            candidate = history.canary.entry.model_copy(update={"reason": reason, "promoted_at": _now()})
            history.canary = None
            if promote:
                self._switch(history, candidate)
            kept = None if history.current is None else history.entries[history.current]
            self._write(contents)
        if promote:
            self._log("promote", role, candidate, canary=True, reason=reason, figures=figures)
        else:
            self._log("rollback", role, kept, canary=True, replaced=candidate.path, reason=reason, figures=figures)

    def _entry(self, role: str, artifact: str | os.PathLike[str], *, force: bool, reason: str | None) -> RegistryEntry:
        folder = Path(artifact).resolve()
        manifest = read_manifest(folder)
        gate = manifest.get("promotion") or {}
        accepted = gate.get("decision") == "accepted"
        if not accepted and not force:
            why = gate.get("reason") or "it was never gated"
            raise UnpromotedArtifactError(
                f"{folder} is not promoted ({why}): gate it with `agentgraph distill gate --model {folder} --promote`, "
                "or pass --force to serve it anyway"
            )
        return RegistryEntry(
            role=role, path=str(folder), trained_for=manifest.get("role"), manifest_sha256=manifest_sha256(folder),
            lineage={
                "dataset_sha256": (manifest.get("dataset") or {}).get("sha256"),
                "dataset_folder": (manifest.get("dataset") or {}).get("folder"),
                "base_model": manifest.get("base_model"),
                "gate": gate or None,
            },
            promoted_at=_now(), forced=not accepted,
            reason=reason or gate.get("reason") or ("forced" if not accepted else "accepted by its gate"),
        )  # fmt: skip

    @staticmethod
    def _switch(history: RoleHistory, entry: RegistryEntry) -> None:
        history.previous.append(history.current)
        history.entries.append(entry)
        history.current = len(history.entries) - 1

    def rollback(self, role: str) -> RegistryEntry | None:
        """Restore what served ``role`` before the last switch; returns it (None: the default)."""
        with self._locked():
            contents = self.read()
            history = contents.roles.get(role)
            if history is None or not history.previous:
                raise DistillError(f"{self} has nothing to roll back for {role!r}: no artifact was promoted for it")
            replaced = None if history.current is None else history.entries[history.current]
            history.current = history.previous.pop()
            self._write(contents)
        restored = None if history.current is None else history.entries[history.current]
        self._log("rollback", role, restored, replaced=None if replaced is None else replaced.path)
        return restored

    def resolve(self, role: str) -> RegistryEntry | None:
        """The entry serving ``role``, checked unchanged since its promotion; logs which one serves.

        Raises :class:`ChangedArtifactError` when the artifact's manifest is no longer the one promoted
        (retrained in place, say), and :class:`DistillError` when its folder is gone.
        """
        entry = self.current(role)
        if entry is None:
            logger.info("%s: no promoted artifact in %s; the default serves it", role, self.folder)
            return None
        self._check(entry, "promoted", f"`agentgraph models rollback {role}`")
        logger.info("%s: serving the artifact promoted on %s, %s", role, entry.promoted_at, entry.path)
        return entry

    def resolve_canary(self, role: str) -> CanaryEntry | None:
        """``role``'s canary, its artifact checked as :meth:`resolve` checks the promoted one."""
        canary = self.canary(role)
        if canary is not None:
            self._check(canary.entry, "canary", f"`agentgraph models judge {role} --rollback`")
            logger.info("%s: a canary serves %.0f%% of the traffic, %s", role, canary.share * 100, canary.entry.path)
        return canary

    @staticmethod
    def _check(entry: RegistryEntry, what: str, undo: str) -> None:
        # ``what`` names how it was registered ("promoted", "canary"): in the errors, what to undo.
        if not (Path(entry.path) / MANIFEST).is_file():
            raise DistillError(f"the {what} {entry.role} artifact {entry.path} is gone: restore it, or {undo}")
        if manifest_sha256(entry.path) != entry.manifest_sha256:
            since = "it was promoted" if what == "promoted" else "its canary started"
            raise ChangedArtifactError(
                f"the {what} {entry.role} artifact {entry.path} changed since {since} on {entry.promoted_at}: "
                f"gate and register it again, or {undo}"
            )

    def _log(
        self, kind: Literal["promote", "rollback", "canary"], role: str, entry: RegistryEntry | None, **metadata: Any
    ) -> None:
        # The output is what serves the role (or, for a canary, a share of it) after the switch.
        outcome = "default" if entry is None else "canary" if kind == "canary" else "promoted"
        log_decision(
            self.decision_log,
            Decision(
                node="model_registry", kind=kind, input={"role": role},
                output=None if entry is None else entry.path, strategy="forced" if metadata.get("forced") else "rule",
                outcome=outcome, metadata={"registry": str(self.folder), **metadata},
            ),
        )  # fmt: skip
