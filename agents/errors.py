"""The rayfleet error tree.

    RayfleetError                 code, retryable
    ├── ConfigError               a spec or deploy config is invalid
    │   └── AgentSpecError        names the file and the field path
    ├── Unauthorized              no API key, or not a known one (401)
    ├── Forbidden                 a known key that may not do this (403)
    ├── NotFound
    │   ├── UnknownAgent
    │   └── UnknownRun            also what another tenant's run looks like
    ├── RequestInvalid            bad input from a caller (field named)
    │   └── RequestTooLarge       a body over the size limit
    ├── Conflict                  the resource's state forbids it now (409): deleting a
    │                             running run, a request whose Idempotency-Key is in use
    │   └── NotPending            deciding a call that does not wait (any more)
    ├── RunError                  a run could not finish normally
    │   ├── BudgetExceeded        steps, tokens, dollars or wall clock
    │   ├── SideEffectsExceeded   more side-effecting tool calls than max_side_effects
    │   ├── RunTimeout
    │   ├── ApprovalTimedOut     a call waited past its deadline (on_timeout: fail)
    │   ├── ToolFailed
    │   │   ├── ToolUnavailable   transient (a tool raises it): the tool pool retries
    │   │   └── ToolArgumentsInvalid  arguments fail the tool's schema: the model is told,
    │   │                         the tool does not run
    │   └── ModelOutputUnusable
    ├── ProviderError             a model provider call failed
    │   ├── ProviderUnavailable   retryable: 408/409/429/5xx, timeouts, connection errors
    │   ├── ProviderRejected      not retryable: other 4xx
    │   └── AllProvidersFailed
    ├── TenantLimited             over a tenant limit (429 + Retry-After)
    ├── Killed                    a kill switch is on (503; in a run: run.cancelled)
    ├── Overloaded                no capacity to start a run
    │   └── HostFull              a run host holds runs_per_actor runs (another is tried)
    └── ServiceUnavailable        a shared service is down or restarting (503 + Retry-After)

Every error crosses Ray boundaries pickled: each class passes all its constructor
arguments, in order, to `super().__init__`, so `cls(*err.args)` rebuilds it. New
arguments go last with defaults. Third-party exceptions are translated into these at the
actor boundary, keeping the original only as text.
"""

from __future__ import annotations

from typing import ClassVar, Literal


class RayfleetError(Exception):
    """Base of every error rayfleet raises on purpose."""

    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *details: object) -> None:
        super().__init__(message, *details)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(RayfleetError):
    """A spec or deploy config is invalid."""

    code = "config_invalid"


class AgentSpecError(ConfigError):
    """An agent spec failed validation; the message names the source and field path."""

    code = "agent_spec_invalid"

    def __init__(self, message: str, source: str = "<memory>") -> None:
        super().__init__(message, source)
        self.source = source


class Unauthorized(RayfleetError):
    """The caller did not present a known API key."""

    code = "unauthorized"


class Forbidden(RayfleetError):
    """The caller's key is known but may not do this (decide an approval it is not a
    decider of)."""

    code = "forbidden"


class NotFound(RayfleetError):
    """Something addressed by name or id does not exist (for this caller)."""

    code = "not_found"


class UnknownAgent(NotFound):
    code = "unknown_agent"

    def __init__(self, message: str, agent: str = "") -> None:
        super().__init__(message, agent)
        self.agent = agent


class UnknownRun(NotFound):
    code = "unknown_run"

    def __init__(self, message: str, run_id: str = "") -> None:
        super().__init__(message, run_id)
        self.run_id = run_id


class UnknownBatch(NotFound):
    code = "unknown_batch"

    def __init__(self, message: str, batch_id: str = "") -> None:
        super().__init__(message, batch_id)
        self.batch_id = batch_id


class RequestInvalid(RayfleetError):
    """A caller sent input we cannot accept; `field` names the offending field."""

    code = "request_invalid"

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message, field)
        self.field = field


class RequestTooLarge(RequestInvalid):
    code = "request_too_large"


class Conflict(RayfleetError):
    """The request conflicts with the current state of its resource; it may succeed later
    (once the run has ended, once the first request with the key has been answered)."""

    code = "conflict"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s)
        self.retry_after_s = retry_after_s


class NotPending(Conflict):
    """A decision on a tool call that is not waiting for one: decided already, never asked,
    or its run has ended."""

    code = "approval_not_pending"


class RunError(RayfleetError):
    """A run could not finish normally."""

    code = "run_error"


BudgetLimit = Literal["steps", "tokens", "cost", "time"]


class BudgetExceeded(RunError):
    code = "budget_exceeded"

    def __init__(self, message: str, limit: BudgetLimit = "steps") -> None:
        super().__init__(message, limit)
        self.limit: BudgetLimit = limit


class SideEffectsExceeded(RunError):
    """The model asked for more side-effecting tool calls in one run than the agent's
    `budgets.max_side_effects`: the run fails before the call that would cross it runs."""

    code = "side_effects_exceeded"

    def __init__(self, message: str, asked: int = 0, cap: int = 0) -> None:
        super().__init__(message, asked, cap)
        self.asked = asked
        self.cap = cap


class RunTimeout(RunError):
    code = "run_timeout"
    retryable = True


class ApprovalTimedOut(RunError):
    code = "approval_timeout"


class ToolFailed(RunError):
    code = "tool_failed"

    def __init__(self, message: str, tool: str = "", retryable: bool = False) -> None:
        super().__init__(message, tool, retryable)
        self.tool = tool
        self.retryable = retryable  # type: ignore[misc]  # per instance: transient or not


class ToolUnavailable(ToolFailed):
    """Raised by a tool for a transient failure (a 5xx, a timeout): the pool retries it."""

    code = "tool_unavailable"

    def __init__(self, message: str, tool: str = "", retryable: bool = True) -> None:
        super().__init__(message, tool, retryable)


class ToolArgumentsInvalid(ToolFailed):
    """A call's arguments do not fit its tool's declared JSON schema; the message names the
    fields and rules that fail, never the values. The loop hands it to the model as the
    call's error, and the tool does not run."""

    code = "tool_arguments_invalid"

    def __init__(self, message: str, tool: str = "", retryable: bool = False) -> None:
        super().__init__(message, tool, retryable)


class ModelOutputUnusable(RunError):
    code = "model_output_unusable"


class ProviderError(RayfleetError):
    """A model provider call failed."""

    code = "provider_error"

    def __init__(self, message: str, provider: str = "", status_code: int | None = None) -> None:
        super().__init__(message, provider, status_code)
        self.provider = provider
        self.status_code = status_code


class ProviderUnavailable(ProviderError):
    """Worth a retry or a fallback: 408/409/429/5xx, timeouts, connection or stream errors."""

    code = "provider_unavailable"
    retryable = True

    def __init__(
        self,
        message: str,
        provider: str = "",
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        RayfleetError.__init__(self, message, provider, status_code, retry_after_s)
        self.provider = provider
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class ProviderRejected(ProviderError):
    """The provider refused the request itself (a 4xx other than 408/409/429): never retried."""

    code = "provider_rejected"


class AllProvidersFailed(ProviderError):
    code = "all_providers_failed"
    retryable = True


class TenantLimited(RayfleetError):
    """Over a tenant limit; the RateLimit fields describe the limit that refused."""

    code = "tenant_limited"
    retryable = True

    def __init__(
        self,
        message: str,
        retry_after_s: float = 1.0,
        quota: float | None = None,
        remaining: float | None = None,
        reset_s: float | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(message, retry_after_s, quota, remaining, reset_s, limit)
        self.retry_after_s = retry_after_s
        self.quota = quota
        self.remaining = remaining
        self.reset_s = reset_s
        self.limit = limit
        """The limit that refused (`requests_per_min`, `concurrent_runs`, ...), if known."""


class Killed(RayfleetError):
    """A kill switch covers this agent, version, tenant or the whole service."""

    code = "killed"

    def __init__(self, message: str, retry_after_s: float = 30.0) -> None:
        super().__init__(message, retry_after_s)
        self.retry_after_s = retry_after_s


class Overloaded(RayfleetError):
    code = "overloaded"
    retryable = True

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retry_after_s)
        self.retry_after_s = retry_after_s


class HostFull(Overloaded):
    """A run host already holds `runs_per_actor` runs and started nothing: whoever starts
    runs takes another host (clients see it only if no host took the run)."""

    code = "host_full"


class ServiceUnavailable(RayfleetError):
    """A shared rayfleet service (run store, limiter, run pool, ...) is down or restarting,
    or died while it handled a call that is not safe to repeat: ask again shortly."""

    code = "service_unavailable"
    retryable = True

    def __init__(self, message: str, service: str = "", retry_after_s: float = 2.0) -> None:
        super().__init__(message, service, retry_after_s)
        self.service = service
        self.retry_after_s = retry_after_s


def all_error_classes() -> list[type[RayfleetError]]:
    """Every class in the tree, for the tests that walk it and for http_errors."""
    found: list[type[RayfleetError]] = []
    pending: list[type[RayfleetError]] = [RayfleetError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
