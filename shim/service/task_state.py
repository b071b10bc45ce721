"""The lifecycle of a task's processes as pure state machines: which Task RPC is legal in which state.

Everything that decides whether an RPC may act on a process lives in this file, in two tables:
`TRANSITIONS` for a task's init process and `EXEC_TRANSITIONS` for the processes `Exec` adds to a
native task, so the Task service never scatters state checks. The init table follows runwasi's
`task_state.rs` (crates/containerd-shimkit/src/sandbox/shim/) and the runc init process
(containerd cmd/containerd-shim-runc-v2/process/init_state.go), with two deliberate choices
where the two differ:

- Kill of a CREATED task kills its instance process, as runc does. runwasi refuses it, but
  ours is a real, already-forked process, and `ctr task rm -f` / CRI's `WithProcessKill`
  expect a created task to be killable.
- Kill of a STOPPED task is NOT_FOUND "process already finished", as runc says, because
  CRI and `WithProcessKill` treat exactly NotFound (and FailedPrecondition) as harmless.

The exec table is the runc shim's exec process (containerd pkg/process/exec_state.go): an exec
is CREATED by Exec, STARTING while `runc exec` runs (Start awaits it, and a second Start or a
Delete must not act meanwhile), RUNNING once it started (or STOPPED at once when that failed, so
that a Wait already pending returns), STOPPED when the reaper saw it exit; Kill before it runs
has no process to signal (FailedPrecondition "process not created"), and a running exec cannot
be deleted. Exec itself is an event of the init process: legal while the container exists and runs
(runc execs into a created container too), refused once it stopped.

This module does no I/O and knows nothing of processes: events in, next state (or a precise
error) out. The exit of a process is the `EXITED` event, fed by the reaper.
"""

from __future__ import annotations

import enum

from shim.errors import FailedPrecondition, NotFound, RpcError


class TaskState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"  # an exec only: `runc exec` is running
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class TaskEvent(enum.Enum):
    START = "start"
    KILL = "kill"
    EXITED = "exited"
    DELETE = "delete"
    EXEC = "exec"  # of the init process: add an exec process to the task
    STARTED = "started"  # of an exec: `runc exec` succeeded, the process runs
    START_FAILED = "start failed"  # of an exec: `runc exec` refused, so there is no process


# {state: {event: next state}}. An event with no entry is illegal in that state.
TRANSITIONS: dict[TaskState, dict[TaskEvent, TaskState]] = {
    TaskState.CREATED: {
        TaskEvent.START: TaskState.RUNNING,
        TaskEvent.KILL: TaskState.CREATED,  # the process exits; EXITED moves us on
        TaskEvent.EXITED: TaskState.STOPPED,  # died before Start (killed, or a crash)
        TaskEvent.DELETE: TaskState.DELETED,
        TaskEvent.EXEC: TaskState.CREATED,
    },
    TaskState.RUNNING: {
        TaskEvent.KILL: TaskState.RUNNING,
        TaskEvent.EXITED: TaskState.STOPPED,
        TaskEvent.EXEC: TaskState.RUNNING,
    },
    TaskState.STOPPED: {
        TaskEvent.DELETE: TaskState.DELETED,
    },
    TaskState.STARTING: {},  # never entered by an init process: its Start is synchronous
    TaskState.DELETED: {},
}

# The same shape for one exec process of a task.
EXEC_TRANSITIONS: dict[TaskState, dict[TaskEvent, TaskState]] = {
    TaskState.CREATED: {
        TaskEvent.START: TaskState.STARTING,
        TaskEvent.DELETE: TaskState.DELETED,
    },
    TaskState.STARTING: {
        TaskEvent.STARTED: TaskState.RUNNING,
        TaskEvent.START_FAILED: TaskState.STOPPED,
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
    (TaskState.DELETED, TaskEvent.EXEC): (NotFound, "task was deleted"),
    # runc shim: "cannot exec in a stopped state" (containerd pkg/process/init_state.go).
    (TaskState.STOPPED, TaskEvent.EXEC): (FailedPrecondition, "cannot exec in a stopped task"),
}

# The runc shim's messages for an exec (containerd pkg/process/exec.go, exec_state.go).
_EXEC_ERRORS: dict[tuple[TaskState, TaskEvent], tuple[type[RpcError], str]] = {
    (TaskState.CREATED, TaskEvent.KILL): (FailedPrecondition, "process not created"),
    (TaskState.STARTING, TaskEvent.KILL): (FailedPrecondition, "process not created"),
    (TaskState.STARTING, TaskEvent.START): (FailedPrecondition, "process is already starting"),
    (TaskState.STARTING, TaskEvent.DELETE): (FailedPrecondition, "process is starting"),
    (TaskState.STOPPED, TaskEvent.KILL): (NotFound, "process already finished"),
    (TaskState.RUNNING, TaskEvent.START): (FailedPrecondition, "cannot start a running process"),
    (TaskState.STOPPED, TaskEvent.START): (FailedPrecondition, "cannot start a stopped process"),
    (TaskState.RUNNING, TaskEvent.DELETE): (
        FailedPrecondition,
        "cannot delete a running process: kill it first",
    ),
    (TaskState.DELETED, TaskEvent.KILL): (NotFound, "process was deleted"),
    (TaskState.DELETED, TaskEvent.START): (NotFound, "process was deleted"),
    (TaskState.DELETED, TaskEvent.DELETE): (NotFound, "process was deleted"),
}


def next_state(task_id: str, state: TaskState, event: TaskEvent) -> TaskState:
    """Return the init process's state after `event`, or raise the RpcError containerd should see."""
    return _advance(TRANSITIONS, _SPECIFIC_ERRORS, task_id, "a task", state, event)


def next_exec_state(task_id: str, exec_id: str, state: TaskState, event: TaskEvent) -> TaskState:
    """Return an exec process's state after `event`, or raise the RpcError containerd should see."""
    return _advance(EXEC_TRANSITIONS, _EXEC_ERRORS, f"{task_id} exec {exec_id}", "an exec", state, event)


def is_legal(state: TaskState, event: TaskEvent) -> bool:
    return event in TRANSITIONS[state]


def is_legal_for_exec(state: TaskState, event: TaskEvent) -> bool:
    return event in EXEC_TRANSITIONS[state]


def _advance(table: dict[TaskState, dict[TaskEvent, TaskState]],
             errors: dict[tuple[TaskState, TaskEvent], tuple[type[RpcError], str]],
             name: str, kind: str, state: TaskState, event: TaskEvent) -> TaskState:
    try:
        return table[state][event]
    except KeyError:
        pass
    error_class, message = errors.get(
        (state, event),
        (FailedPrecondition, f"cannot {event.value} {kind} in state {state.value}"),
    )
    raise error_class(f"{name}: {message}")
