"""The task lifecycle as a pure state machine: which Task RPC is legal in which state.

Everything that decides whether an RPC may act on a task lives in this file, in the
`TRANSITIONS` table, so the Task service never scatters state checks. The table follows
runwasi's `task_state.rs` and the runc init process (reference §3.4, §3.5), with two
deliberate choices where the two differ:

- Kill of a CREATED task kills its instance process, as runc does. runwasi refuses it, but
  ours is a real, already-forked process, and `ctr task rm -f` / CRI's `WithProcessKill`
  expect a created task to be killable.
- Kill of a STOPPED task is NOT_FOUND "process already finished", as runc says, because
  CRI and `WithProcessKill` treat exactly NotFound (and FailedPrecondition) as harmless.

This module does no I/O and knows nothing of processes: events in, next state (or a precise
error) out. The exit of the process is the `EXITED` event, fed by the reaper.
"""

from __future__ import annotations

import enum

from shim.errors import FailedPrecondition, NotFound, RpcError


class TaskState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class TaskEvent(enum.Enum):
    START = "start"
    KILL = "kill"
    EXITED = "exited"
    DELETE = "delete"


# {state: {event: next state}}. An event with no entry is illegal in that state.
TRANSITIONS: dict[TaskState, dict[TaskEvent, TaskState]] = {
    TaskState.CREATED: {
        TaskEvent.START: TaskState.RUNNING,
        TaskEvent.KILL: TaskState.CREATED,  # the process exits; EXITED moves us on
        TaskEvent.EXITED: TaskState.STOPPED,  # died before Start (killed, or a crash)
        TaskEvent.DELETE: TaskState.DELETED,
    },
    TaskState.RUNNING: {
        TaskEvent.KILL: TaskState.RUNNING,
        TaskEvent.EXITED: TaskState.STOPPED,
    },
    TaskState.STOPPED: {
        TaskEvent.DELETE: TaskState.DELETED,
    },
    TaskState.DELETED: {},
}

# The error an illegal event gets, by (state, event); anything not listed is
# FailedPrecondition with the generic message.
_SPECIFIC_ERRORS: dict[tuple[TaskState, TaskEvent], tuple[type[RpcError], str]] = {
    (TaskState.STOPPED, TaskEvent.KILL): (NotFound, "process already finished"),
    (TaskState.RUNNING, TaskEvent.DELETE): (
        FailedPrecondition,
        "task is running: kill it before deleting it",
    ),
    (TaskState.DELETED, TaskEvent.KILL): (NotFound, "task was deleted"),
    (TaskState.DELETED, TaskEvent.DELETE): (NotFound, "task was deleted"),
    (TaskState.DELETED, TaskEvent.START): (NotFound, "task was deleted"),
}


def next_state(task_id: str, state: TaskState, event: TaskEvent) -> TaskState:
    """Return the state after `event`, or raise the RpcError containerd should see."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        pass
    error_class, message = _SPECIFIC_ERRORS.get(
        (state, event),
        (FailedPrecondition, f"cannot {event.value} a task in state {state.value}"),
    )
    raise error_class(f"{task_id}: {message}")


def is_legal(state: TaskState, event: TaskEvent) -> bool:
    return event in TRANSITIONS[state]
