"""Typed errors. Each one says what went wrong and what to do about it.

Nothing in agentgraph falls back silently: a node that has a fallback catches
these explicitly and records that it did.

Example:
    >>> from agentgraph.errors import AgentGraphError, SLMError, SLMUnavailableError
    >>> error = SLMUnavailableError("http://127.0.0.1:8000")
    >>> isinstance(error, SLMError) and isinstance(error, AgentGraphError)
    True
    >>> print(error)  # doctest: +ELLIPSIS
    cannot reach the SLM server at http://127.0.0.1:8000. Start one with `agentgraph slm serve` or ...
"""

from __future__ import annotations

from typing import Any


class AgentGraphError(Exception):
    """Base class of every error agentgraph raises on purpose."""


class SLMError(AgentGraphError):
    """A small-model call failed."""


class ModelNotFoundError(SLMError):
    """The model folder or the packaged weights it is built from are missing."""


class SLMUnavailableError(SLMError):
    """The SLM server could not be reached."""

    def __init__(self, base_url: str, cause: BaseException | None = None) -> None:
        detail = f": {cause}" if cause else ""
        super().__init__(
            f"cannot reach the SLM server at {base_url}{detail}. Start one with "
            "`agentgraph slm serve` or point AGENTGRAPH_SLM_URL / --slm-url at a running vLLM server."
        )
        self.base_url = base_url


class SLMTimeoutError(SLMError):
    """The SLM server did not answer in time."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        super().__init__(
            f"the SLM server at {base_url} did not answer within {timeout_s:g} s. "
            "Raise the timeout (AGENTGRAPH_SLM_TIMEOUT) or check the server's load."
        )
        self.base_url = base_url
        self.timeout_s = timeout_s


class SLMHTTPError(SLMError):
    """The SLM server answered a request with an HTTP error status; :class:`SLMRequestRejectedError` (4xx) or
    :class:`SLMServerError` (5xx) says whose fault it is.

    ``status_code`` and ``body`` (the reply's first 500 characters: vLLM puts its reason there) are kept for the caller.
    """

    def __init__(self, method: str, url: str, status_code: int, body: str, advice: str) -> None:
        super().__init__(f"{method} {url} answered {status_code}: {body.strip() or '(no body)'}. {advice}")
        self.method = method
        self.url = url
        self.status_code = status_code
        self.body = body


class SLMRequestRejectedError(SLMHTTPError):
    """The SLM server refused the request (HTTP 4xx); it refuses it again if retried unchanged."""

    def __init__(self, method: str, url: str, status_code: int, body: str) -> None:
        check = (
            "set AGENTGRAPH_SLM_API_KEY to the key the server was started with (--api-key)" if status_code in (401, 403)
            else "check the model name (the server lists its models at /v1/models) and the prompt's length against "
            "the server's max_model_len"
        )  # fmt: skip
        super().__init__(
            method,
            url,
            status_code,
            body,
            f"The server refused the request, so retrying it unchanged fails again: {check}.",
        )


class SLMServerError(SLMHTTPError):
    """The SLM server failed while handling the request (HTTP 5xx); the same request may succeed later."""

    def __init__(self, method: str, url: str, status_code: int, body: str) -> None:
        super().__init__(
            method,
            url,
            status_code,
            body,
            "The server failed, not the request: retry later, and read the server's log if it keeps failing.",
        )


class MalformedResponseError(SLMError):
    """The SLM server answered, but not with what the protocol promises."""


class MalformedLogprobsError(MalformedResponseError):
    """The server's log-probabilities are missing, not finite log-probabilities, of the wrong shape or for tokens
    not asked for: scores built on them would be wrong, so nothing is scored."""

    def __init__(self, endpoint: str, problem: str) -> None:
        super().__init__(
            f"{endpoint} answered with unusable log-probs: {problem}. agentgraph reads the log-probs of the token "
            "ids it names (vLLM's logprob_token_ids and return_tokens_as_token_ids): check that the server is vLLM "
            "(`agentgraph slm serve` starts one)."
        )
        self.endpoint = endpoint
        self.problem = problem


class ContextBudgetExceededError(SLMError):
    """The input does not fit the model's context budget."""

    def __init__(self, prompt_tokens: int, budget: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens, over the context budget of {budget}. "
            "Shorten the input (nodes cut it with `truncate_to_budget`) or raise max_context_tokens."
        )
        self.prompt_tokens = prompt_tokens
        self.budget = budget


class ServerStartError(SLMError):
    """A local vLLM server did not come up."""


class StructuredOutputError(SLMError):
    """Constrained output parsed as JSON but failed the pydantic model's validation.

    The grammar enforces the JSON schema; validators it cannot express (custom
    validators, some formats) can still reject the value. ``text`` keeps the raw
    output so a caller can repair it.
    """

    def __init__(self, schema: type, text: str, cause: Exception, *, usage: Any = None) -> None:
        super().__init__(f"output does not validate as {schema.__name__}: {cause}")
        self.schema = schema
        self.text = text
        self.cause = cause
        self.usage = usage  # the slm.Usage of the call that wrote ``text``, when one did


class EmptyInputError(AgentGraphError, ValueError):
    """A node, or an SLM call, was given no text to work on."""


class InputTooLargeError(AgentGraphError, ValueError):
    """A node was given more input than its ``max_input_chars`` allows."""


class IdempotencyError(AgentGraphError):
    """An idempotency key could not be used as asked."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"idempotency key {key[:16]}…: {message}")
        self.key = key


class IdempotencyKeyReuseError(IdempotencyError, ValueError):
    """The key was already used with other arguments: a caller bug, never retried."""


class IdempotencyConflictError(IdempotencyError):
    """A call with this key is in flight elsewhere; retry once it has finished."""


class IdempotencyOutcomeUnknownError(IdempotencyError):
    """A call that must not run twice started, and its worker died before recording what happened.

    Only a person (or the tool's own records) can tell whether it took effect.
    """


class MissingThreadIdError(AgentGraphError, ValueError):
    """A node that derives keys from the LangGraph thread ran without one."""


class NoToolCallsError(AgentGraphError, ValueError):
    """A tool node found no AI message with tool calls to run."""


class ToolCallIdError(AgentGraphError, ValueError):
    """Tool calls of one message lack ids or share one, so an answer cannot be matched to its call."""


class ToolArgumentsError(AgentGraphError, ValueError):
    """Arguments made for a tool do not fit its schema."""


class ApprovalResponseError(AgentGraphError, ValueError):
    """A human approval was resumed with a payload the pending request does not allow."""


class DatasetError(AgentGraphError):
    """The data asked for cannot make a dataset (missing, empty or malformed)."""


class ConfigError(AgentGraphError, ValueError):
    """A setting (an environment variable, a command-line option) holds a value agentgraph cannot use."""


class InvalidTextError(AgentGraphError, ValueError):
    """Text that no store, model or JSON encoder takes: not a str, or holding lone surrogates (bytes that were not UTF-8)."""


class TurnInputError(AgentGraphError, ValueError):
    """A turn was asked for with input it cannot run on (both a message and a resume value, or neither, say)."""


class UnknownThreadError(AgentGraphError, LookupError):
    """A thread to resume has no checkpoint: its id (or the place its checkpoints are kept) is wrong."""

    def __init__(self, thread_id: str, where: str) -> None:
        super().__init__(
            f"no thread {thread_id!r} in {where}: check the thread id and where its checkpoints are kept "
            "(agentgraph run: --thread and --data-dir), or send a message to start a new thread"
        )
        self.thread_id = thread_id


class NothingToResumeError(AgentGraphError, ValueError):
    """A resume value was sent to a thread with no pending interrupt: its last turn has already ended."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"thread {thread_id!r} has no pending approval to answer: its last turn already ended, and an answer "
            "given now would change nothing; send a new message on the thread instead"
        )
        self.thread_id = thread_id


class ThreadBusyError(AgentGraphError):
    """Another turn on the same thread did not finish in time; turns on one thread run one at a time."""

    def __init__(self, thread_id: str, wait_s: float, where: str) -> None:
        super().__init__(
            f"thread {thread_id!r} is busy: another turn on it ({where}) did not finish within {wait_s:g} s. "
            "Turns on one thread run one at a time: retry when it has finished, or use another thread"
        )
        self.thread_id = thread_id
        self.wait_s = wait_s


class CheckpointDecryptionError(AgentGraphError):
    """A checkpoint cannot be decrypted: it was written with another key, or it was altered."""
