"""The API's requests and responses: pydantic models, from which OpenAPI is generated."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class StartExecution(BaseModel):
    """Start a durable actor by name."""

    model_config = ConfigDict(extra="forbid")

    actor: str = Field(description="The durable actor's name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    execution_id: str | None = Field(
        default=None,
        description="Idempotency: the same id with the same input returns the same execution. "
        "Defaults to the Idempotency-Key header, else a new id.",
    )
    priority: int | None = Field(
        default=None,
        description="Lower runs first (claim order, and admission to a concurrency key); "
        "the actor's priority by default",
    )


class Started(BaseModel):
    execution_id: str
    status: str


class Step(_Out):
    key: str
    kind: str
    name: str
    fn: str | None
    status: str
    result: Any
    error: dict[str, Any] | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    wake_at: datetime | None


class Branch(_Out):
    index: int
    name: str
    status: str
    attempts: int
    error: dict[str, Any] | None


class Group(_Out):
    key: str
    mode: str
    status: str
    size: int
    open: int
    max_concurrency: int | None
    winner: int | None
    branches: list[Branch]


class Child(_Out):
    id: str
    actor_name: str
    status: str
    step_key: str | None
    detached: bool
    created_at: datetime
    finished_at: datetime | None


class Event(_Out):
    name: str
    key: str | None
    payload: Any
    sent_at: datetime
    consumed_by: str | None


class Execution(_Out):
    id: str
    actor_name: str
    queue_name: str
    status: str
    input: Any
    result: Any
    error: dict[str, Any] | None
    deadline: datetime | None
    waiting_for: str | None
    wake_at: datetime | None
    runs: int
    generation: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    parent_id: str | None
    detached: bool
    paused_at: datetime | None = Field(description="Set while an operator holds it")


class Block(_Out):
    """Where a blocked execution's replay diverged from its journal."""

    step: str = Field(description="The first journal entry where the replay diverged")
    kind: str | None = Field(description="changed, unrecorded, out_of_order or missing")
    message: str
    blocks: int = Field(description="Runs in a row that blocked there")
    first_blocked_at: datetime
    blocked_at: datetime


class ExecutionDetail(Execution):
    steps: list[Step]
    groups: list[Group]
    children: list[Child]
    inbox: list[Event]
    blocked: Block | None = Field(default=None, description="Set while it is blocked")


class ExecutionPage(BaseModel):
    items: list[Execution]
    total: int = Field(description="Executions matching the filters, over every page")
    next_cursor: str | None = Field(description="Pass as `after` for the next page")


class Outcome(BaseModel):
    """Where an execution stands, after a wait for its end."""

    execution_id: str
    status: str
    done: bool = Field(description="Whether it ended (completed, failed, cancelled, timed out)")
    result: Any = None
    error: dict[str, Any] | None = None


class EventAccepted(BaseModel):
    stored: bool = Field(description="False when an event with the same key was stored before")


class Cancelled(BaseModel):
    previous_status: str


class Retried(BaseModel):
    execution_id: str
    status: str


class Rerun(BaseModel):
    """Run an ended execution again from a step on."""

    model_config = ConfigDict(extra="forbid")

    from_step: str = Field(description="A journal key (step:charge) or a step's name")


class Rerunning(BaseModel):
    execution_id: str
    #: The journal key the execution runs again from.
    from_step: str
    status: str


class Hold(BaseModel):
    """An execution's or an actor's pause, after a pause or resume."""

    paused: bool
    #: Resumes only: how many wake-ups that came due during the pause were sent.
    resent_wakeups: int = 0


class Actor(BaseModel):
    name: str
    queue_name: str
    paused_at: datetime | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    pending_migrations: list[str]


class Queue(_Out):
    queue_name: str
    queued: int
    delayed: int
    parked: int
    claimed: int
    dead_letters: int
    oldest_due_s: float | None = Field(description="How long the oldest due message waited")


class Worker(_Out):
    id: UUID
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_age_s: float
    claimed: int


class Queues(BaseModel):
    queues: list[Queue]
    workers: list[Worker]


class DeadLetter(_Out):
    id: int
    queue_name: str
    message_id: str
    actor_name: str
    deliveries: int
    error: str | None
    dead_at: datetime


class SelectDeadLetters(BaseModel):
    """Which dead letters: by id, by queue, or all of them (said explicitly)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[int] | None = None
    queue: str | None = None
    older_than_s: float | None = Field(default=None, ge=0, description="For purge only")
    all: bool = False


class Count(BaseModel):
    count: int


class Schedule(BaseModel):
    """A durable schedule and what its scheduler has done."""

    name: str
    actor_name: str
    cron: str | None = Field(description="A croniter expression, read on the wall clock of tz")
    every_s: float | None = Field(description="Or an interval, in seconds")
    tz: str
    overlap: str = Field(description="skip, buffer_one, allow or cancel_previous")
    catchup: str = Field(description="none, latest or all")
    catchup_window_s: float = Field(description="How late a tick may still start")
    args: list[Any]
    kwargs: dict[str, Any]
    source: str = Field(description="code (a @zart.schedule) or runtime")
    next_fire_at: datetime | None
    last_tick: datetime | None
    last_execution_id: str | None
    buffered_tick: datetime | None
    last_error: str | None
    paused_at: datetime | None
    ticks_started: int
    ticks_missed: int
    created_at: datetime
    updated_at: datetime


class Trigger(BaseModel):
    execution_id: str = Field(description="schedule:<name>:manual:<key>")


class BackfillRange(BaseModel):
    """Start every tick in [start, end), each with its own id: repeating it is harmless."""

    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime
    end: AwareDatetime = Field(description="Not after now: later ticks fire by themselves")


class Backfilled(BaseModel):
    started: int = Field(description="Ticks started now")
    existing: int = Field(description="Ticks whose execution had been started before")
    execution_ids: list[str]
