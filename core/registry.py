"""Job definitions and the registry the producer, the worker and the inline runner all read.

A job is `async def name(ctx: JobContext, *, typed keyword args)`. `define()` turns one into
a `JobDefinition` that validates keyword arguments against the signature (a pydantic model
built from it) and turns them into the JSON payload that travels to Redis, so a bad call
fails in the caller before anything is queued or run.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError

from core.context import JobContext
from core.errors import JobValidationError, UnknownJobError
from core.flow import DEFAULT_QUEUE, STANDARD_QUEUES, QueueChooser, RateCost, check_queue_name, ordered_union
from core.plugin import PluginFactory
from settings import Settings

__all__ = [
    "Fallback",
    "InlineLimit",
    "JobDefinition",
    "JobFunc",
    "Precheck",
    "Registry",
    "Schedule",
    "define",
]

P = ParamSpec("P")
Fallback = Literal["inline", "spool", "reject"]
R = TypeVar("R")
JobFunc = Callable[Concatenate[JobContext, P], Awaitable[R]]
# Says why a job cannot run with these settings (e.g. a provider not configured), or None.
Precheck = Callable[[Settings], str | None]
# Says why this one job is too big to run inline in a caller's process (e.g. a bulk email to
# thousands), or None; such a job waits in the spool while Redis is down instead.
InlineLimit = Callable[[Settings, Mapping[str, Any]], str | None]


def _args_model(name: str, func: Callable[..., Any]) -> type[BaseModel]:
    signature = inspect.signature(func)
    hints = get_type_hints(func, include_extras=True)  # keep Annotated constraints (lengths, ranges)
    params = list(signature.parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"job {name!r} must take the job context as its first positional argument")
    fields: dict[str, Any] = {}
    for param in params[1:]:
        if param.kind is not param.KEYWORD_ONLY:
            raise TypeError(f"job {name!r}: argument {param.name!r} must be keyword-only (put it after `*`)")
        if param.name not in hints:
            raise TypeError(f"job {name!r}: argument {param.name!r} needs a type annotation")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    # Built at the first validation of this job, not at registration: a process validates only
    # the jobs it enqueues or runs (issue 18).
    config = ConfigDict(extra="forbid", strict=True, defer_build=True)
    model: type[BaseModel] = pydantic.create_model(f"{name}_args", __config__=config, **fields)
    return model


def _context(settings: Settings | None) -> dict[str, Any] | None:
    return None if settings is None else {"settings": settings}


def _explain(job: str, exc: pydantic.ValidationError, accepted: Iterable[str] = ()) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        arg = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        if err["type"] == "missing":
            problems.append(f"argument {arg!r} is required")
        elif err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            names = ", ".join(accepted)
            problems.append(f"unknown argument {arg!r} (it takes {names or 'no arguments'})")
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown argument {arg!r}")
        else:
            shown = repr(err.get("input"))
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "value_error" and len(shown) > 60:
                # A validator's own message describes the value; a long one is only noise here.
                problems.append(f"argument {arg!r}: {message}")
                continue
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            problems.append(f"argument {arg!r}: {message} (got {shown})")
    return f"{job}: " + "; ".join(problems)


@dataclass(frozen=True, eq=False)
class JobDefinition(Generic[P, R]):
    """One registered job: its name, coroutine and execution limits."""

    name: str
    func: JobFunc[P, R]
    timeout: float | None = None
    max_tries: int | None = None
    description: str = ""
    precheck: Precheck | None = None
    inline_limit: InlineLimit | None = None
    # What happens when Redis is unusable: run inline now, keep in the Postgres spool until Redis
    # returns, or refuse. A spooled job may still run inline when Postgres is down too.
    fallback: Fallback = "inline"
    inline_if_spool_down: bool = True
    # Kept in Postgres until it completes, so a Redis that loses its data cannot lose the job.
    durable: bool = False
    # The queue it goes to unless the caller names one; a function picks it from the arguments.
    queue: str | QueueChooser = DEFAULT_QUEUE
    # The rate limits each run spends (only the limits configured in RATE_LIMITS apply).
    rate_limits: tuple[RateCost, ...] = ()
    args_model: type[BaseModel] = field(init=False, repr=False)
    _arg_names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        model = _args_model(self.name, self.func)
        object.__setattr__(self, "args_model", model)
        object.__setattr__(self, "_arg_names", tuple(model.model_fields))

    @property
    def arg_names(self) -> list[str]:
        return list(self._arg_names)

    @property
    def default_queue(self) -> str | None:
        """The queue named in the definition; None when a function picks it per job."""
        return self.queue if isinstance(self.queue, str) else None

    def queue_for(self, payload: Mapping[str, Any]) -> str:
        """The queue a job with these (validated) arguments goes to by default."""
        return self.queue if isinstance(self.queue, str) else check_queue_name(self.queue(payload))

    def costs(self, payload: Mapping[str, Any], configured: Mapping[str, Any]) -> list[tuple[str, int]]:
        """What one run spends of each rate limit that is configured (limit name, cost)."""
        return [(rc.limit, rc.of(payload)) for rc in self.rate_limits if rc.limit in configured]

    def payload(
        self, kwargs: Mapping[str, Any], *, max_bytes: int, settings: Settings | None = None
    ) -> dict[str, Any]:
        """Validate caller arguments and return the JSON-ready payload; raises JobValidationError.

        `settings` reach the argument models' validators as the validation context (`info.context
        ["settings"]`), for checks that depend on the deployment (e.g. allowed email senders)."""
        try:
            model = self.args_model.model_validate(dict(kwargs), context=_context(settings))
        except pydantic.ValidationError as exc:
            raise JobValidationError(_explain(self.name, exc, self.arg_names)) from None
        return self._encode(model, max_bytes)

    def payload_from_json(
        self, raw: str | bytes, *, max_bytes: int, settings: Settings | None = None
    ) -> dict[str, Any]:
        """Like `payload`, for arguments given as JSON text (the CLI)."""
        try:
            model = self.args_model.model_validate_json(raw, context=_context(settings))
        except pydantic.ValidationError as exc:
            raise JobValidationError(_explain(self.name, exc, self.arg_names)) from None
        return self._encode(model, max_bytes)

    def _encode(self, model: BaseModel, max_bytes: int) -> dict[str, Any]:
        try:
            payload = model.model_dump(mode="json")
            encoded = orjson.dumps(payload)
        except (PydanticSerializationError, TypeError) as exc:
            raise JobValidationError(
                f"{self.name}: arguments are not JSON-serializable ({exc}); pass ids, strings, numbers, "
                "lists and dicts"
            ) from None
        if len(encoded) > max_bytes:
            raise JobValidationError(
                f"{self.name}: arguments are {len(encoded)} bytes, over the {max_bytes}-byte limit "
                "(MAX_PAYLOAD_BYTES); pass an id and load the data in the job"
            )
        # Return what the worker will see: the JSON round trip, so inline runs get the same values.
        decoded: dict[str, Any] = orjson.loads(encoded)
        if b"\\u0000" in encoded and (where := _nul_at(decoded, self.name)) is not None:
            # Postgres text and jsonb cannot hold NUL: such a job could not be spooled or
            # dead-lettered, so it is refused here rather than lost there.
            raise JobValidationError(
                f"{where}: contains a NUL character (\\u0000), which the job ledger cannot store; "
                "remove it or send the data base64-encoded"
            )
        return decoded

    def load(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Typed keyword arguments from a JSON payload, as the job's signature declares them."""
        if not payload and not self._arg_names:
            return {}  # a job that takes no arguments and got none: nothing to validate
        try:
            model = self.args_model.model_validate(dict(payload), strict=False)
        except pydantic.ValidationError as exc:
            raise JobValidationError(_explain(self.name, exc)) from None
        return {name: getattr(model, name) for name in self._arg_names}

    def too_big_inline(self, settings: Settings, payload: Mapping[str, Any]) -> str | None:
        """Why this job may not run inline (see `InlineLimit`), or None."""
        return self.inline_limit(settings, payload) if self.inline_limit is not None else None

    def check_settings(self, settings: Settings) -> None:
        """Raise JobValidationError if `precheck` says the job cannot run with `settings`."""
        if self.precheck is not None and (problem := self.precheck(settings)):
            raise JobValidationError(f"{self.name}: {problem}")


def _nul_at(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in `value` holding a NUL character, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"{path} key {key!r}"
            if (found := _nul_at(item, f"{path}.{key}")) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _nul_at(item, f"{path}[{i}]")) is not None:
                return found
    return None


def define(
    func: JobFunc[P, R],
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_tries: int | None = None,
    precheck: Precheck | None = None,
    inline_limit: InlineLimit | None = None,
    fallback: Fallback = "inline",
    inline_if_spool_down: bool = True,
    durable: bool = False,
    queue: str | QueueChooser = DEFAULT_QUEUE,
    rate_limits: Iterable[RateCost] = (),
) -> JobDefinition[P, R]:
    doc = inspect.getdoc(func) or ""
    if isinstance(queue, str):
        try:
            check_queue_name(queue)
        except JobValidationError as exc:
            raise ValueError(f"job {name or func.__name__!r}: {exc}") from None
    return JobDefinition(
        name=name or func.__name__,
        func=func,
        timeout=timeout,
        max_tries=max_tries,
        description=doc.splitlines()[0] if doc else "",
        precheck=precheck,
        inline_limit=inline_limit,
        fallback=fallback,
        inline_if_spool_down=inline_if_spool_down,
        durable=durable,
        queue=queue,
        rate_limits=tuple(rate_limits),
    )


def _origin(definition: JobDefinition[Any, Any]) -> str:
    """Where a job's coroutine is defined: `module.function`."""
    func = definition.func
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


TimeField = int | frozenset[int] | None


@dataclass(frozen=True)
class Schedule:
    """When the worker runs a registered job by itself, with no arguments (like cron).

    Each field is one value, a set of values, or None for "any"; `weekday` 0 is Monday. The
    fields are wall-clock time in `tz` (an IANA name such as "America/New_York"; None is UTC),
    across daylight-saving changes: a time skipped by a spring-forward runs once, as many
    minutes after the jump as it was into the gap; a time repeated by a fall-back runs once, at
    its first occurrence (cron's rules).
    `catch_up`: a run missed because no worker was up, or Redis was away, at its due time is
    run late if it was due at most this long ago (only the latest missed run; None: never).
    Runs due before the schedule's first start on a Redis are not caught up: nothing missed them.
    """

    job: str
    month: TimeField = None
    day: TimeField = None
    weekday: TimeField = None
    hour: TimeField = None
    minute: TimeField = None
    second: TimeField = 0
    run_at_startup: bool = False
    catch_up: timedelta | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        if self.catch_up is not None and self.catch_up <= timedelta(0):
            raise ValueError(f"schedule for {self.job!r}: catch_up must be positive, or None for never")
        if self.tz is not None:
            try:
                ZoneInfo(self.tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"schedule for {self.job!r}: unknown time zone {self.tz!r}; use an IANA name such as "
                    "'America/New_York', or None for UTC"
                ) from None

    @property
    def zone(self) -> tzinfo:
        """The time zone the fields are read in."""
        return ZoneInfo(self.tz) if self.tz is not None else UTC

    @classmethod
    def every_seconds(cls, job: str, seconds: int) -> Schedule:
        if not 1 <= seconds <= 60 or 60 % seconds:
            raise ValueError(f"schedule for {job!r}: {seconds} s does not divide a minute")
        return cls(job, second=frozenset(range(0, 60, seconds)))

    @classmethod
    def every_minutes(cls, job: str, minutes: int, *, second: int = 0) -> Schedule:
        if not 1 <= minutes <= 60 or 60 % minutes:
            raise ValueError(f"schedule for {job!r}: {minutes} min does not divide an hour")
        return cls(job, minute=frozenset(range(0, 60, minutes)), second=second)


class Registry:
    """The one list of jobs, their schedules and the families' plug-ins; duplicate names are
    refused when it is built."""

    def __init__(
        self,
        definitions: Iterable[JobDefinition[Any, Any]],
        *,
        schedules: Iterable[Schedule] = (),
        plugins: Iterable[PluginFactory] = (),
    ) -> None:
        self._by_name: dict[str, JobDefinition[Any, Any]] = {}
        self._by_func: dict[Callable[..., Any], JobDefinition[Any, Any]] = {}
        for definition in definitions:
            if definition.name in self._by_name:
                raise ValueError(f"duplicate job name {definition.name!r} in the registry")
            self._by_name[definition.name] = definition
            # A coroutine registered under several names is found by function as its first name.
            self._by_func.setdefault(definition.func, definition)
        self.schedules: tuple[Schedule, ...] = tuple(schedules)
        self.plugins: tuple[PluginFactory, ...] = tuple(plugins)
        for schedule in self.schedules:
            if schedule.job not in self._by_name:
                raise ValueError(f"schedule for {schedule.job!r}: no such job in the registry")
            fields = self._by_name[schedule.job].args_model.model_fields.values()
            if any(field.is_required() for field in fields):
                raise ValueError(f"schedule for {schedule.job!r}: a scheduled job cannot need arguments")

    def joined(self, extra: Iterable[JobDefinition[Any, Any]]) -> Registry:
        """This registry with `extra` jobs after its own (same schedules and plug-ins). A
        definition already in it is skipped; another job under a taken name raises ValueError
        naming both."""
        by_name = dict(self._by_name)
        for definition in extra:
            taken = by_name.get(definition.name)
            if taken is definition:
                continue
            if taken is not None:
                raise ValueError(
                    f"job {definition.name!r} ({_origin(definition)}) has the name of the registered job "
                    f"{taken.name!r} ({_origin(taken)}); give it another with define(..., name='...')"
                )
            by_name[definition.name] = definition
        return Registry(by_name.values(), schedules=self.schedules, plugins=self.plugins)

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def queues(self) -> list[str]:
        """The standard queues and any other the definitions name, most urgent first."""
        named = (d.default_queue for d in self._by_name.values() if d.default_queue is not None)
        return ordered_union(STANDARD_QUEUES, sorted(set(named)))

    def get(self, job: str | Callable[..., Any] | JobDefinition[Any, Any]) -> JobDefinition[Any, Any]:
        if isinstance(job, JobDefinition):
            job = job.name
        if isinstance(job, str):
            found = self._by_name.get(job)
            label = job
        else:
            found = self._by_func.get(job)
            label = getattr(job, "__name__", repr(job))
        if found is None:
            raise UnknownJobError(f"unknown job {label!r}; registered jobs: {', '.join(self.names())}")
        return found
