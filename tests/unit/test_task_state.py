"""The task and exec state machines: which RPC is legal in which state, and the code an illegal one gets."""

import pytest

from shim.errors import Code, RpcError
from shim.service.task_state import (
    EXEC_TRANSITIONS,
    TRANSITIONS,
    TaskEvent,
    TaskState,
    is_legal,
    is_legal_for_exec,
    next_exec_state,
    next_state,
)


def _code_of(state: TaskState, event: TaskEvent) -> Code:
    with pytest.raises(RpcError) as info:
        next_state("t1", state, event)
    assert info.value.message.startswith("t1: ")
    return info.value.code


def test_happy_path_created_running_stopped_deleted():
    state = TaskState.CREATED
    for event, expected in [(TaskEvent.START, TaskState.RUNNING),
                            (TaskEvent.EXITED, TaskState.STOPPED),
                            (TaskEvent.DELETE, TaskState.DELETED)]:
        state = next_state("t1", state, event)
        assert state is expected


def test_created_task_can_be_killed_and_deleted_without_start():
    assert next_state("t1", TaskState.CREATED, TaskEvent.KILL) is TaskState.CREATED
    assert next_state("t1", TaskState.CREATED, TaskEvent.DELETE) is TaskState.DELETED


def test_start_of_running_or_stopped_task_is_failed_precondition():
    assert _code_of(TaskState.RUNNING, TaskEvent.START) == Code.FAILED_PRECONDITION
    assert _code_of(TaskState.STOPPED, TaskEvent.START) == Code.FAILED_PRECONDITION


def test_kill_of_exited_task_is_not_found_as_runc_says():
    # CRI and WithProcessKill ignore exactly NotFound here.
    assert _code_of(TaskState.STOPPED, TaskEvent.KILL) == Code.NOT_FOUND


def test_delete_of_running_task_is_failed_precondition():
    assert _code_of(TaskState.RUNNING, TaskEvent.DELETE) == Code.FAILED_PRECONDITION


def test_nothing_is_legal_after_delete():
    for event in TaskEvent:
        assert not is_legal(TaskState.DELETED, event)
        assert _code_of(TaskState.DELETED, event) in (Code.NOT_FOUND, Code.FAILED_PRECONDITION)


def test_every_state_has_a_row_and_every_target_is_a_state():
    assert set(TRANSITIONS) == set(TaskState)
    for row in TRANSITIONS.values():
        assert all(isinstance(target, TaskState) for target in row.values())


def test_exit_is_only_legal_while_a_process_exists():
    assert is_legal(TaskState.CREATED, TaskEvent.EXITED)
    assert is_legal(TaskState.RUNNING, TaskEvent.EXITED)
    assert not is_legal(TaskState.STOPPED, TaskEvent.EXITED)


# -- exec processes (the runc shim's exec_state.go) ---------------------------------------------------------------

def _exec_code_of(state: TaskState, event: TaskEvent) -> Code:
    with pytest.raises(RpcError) as info:
        next_exec_state("t1", "e1", state, event)
    assert info.value.message.startswith("t1 exec e1: ")
    return info.value.code


def test_exec_happy_path_created_starting_running_stopped_deleted():
    state = TaskState.CREATED
    for event, expected in [(TaskEvent.START, TaskState.STARTING),
                            (TaskEvent.STARTED, TaskState.RUNNING),
                            (TaskEvent.KILL, TaskState.RUNNING),
                            (TaskEvent.EXITED, TaskState.STOPPED),
                            (TaskEvent.DELETE, TaskState.DELETED)]:
        state = next_exec_state("t1", "e1", state, event)
        assert state is expected


def test_exec_whose_start_failed_is_stopped_so_wait_returns_and_delete_works():
    state = next_exec_state("t1", "e1", TaskState.STARTING, TaskEvent.START_FAILED)
    assert state is TaskState.STOPPED
    assert next_exec_state("t1", "e1", state, TaskEvent.DELETE) is TaskState.DELETED


def test_exec_never_started_can_be_deleted():
    assert next_exec_state("t1", "e1", TaskState.CREATED, TaskEvent.DELETE) is TaskState.DELETED


def test_kill_of_an_exec_before_it_runs_is_failed_precondition_process_not_created():
    for state in (TaskState.CREATED, TaskState.STARTING):
        assert _exec_code_of(state, TaskEvent.KILL) == Code.FAILED_PRECONDITION
    with pytest.raises(RpcError, match="process not created"):
        next_exec_state("t1", "e1", TaskState.CREATED, TaskEvent.KILL)


def test_kill_of_an_exited_exec_is_not_found_as_runc_says():
    assert _exec_code_of(TaskState.STOPPED, TaskEvent.KILL) == Code.NOT_FOUND


def test_a_second_start_and_a_delete_while_runc_exec_runs_are_refused():
    assert _exec_code_of(TaskState.STARTING, TaskEvent.START) == Code.FAILED_PRECONDITION
    assert _exec_code_of(TaskState.STARTING, TaskEvent.DELETE) == Code.FAILED_PRECONDITION


def test_running_exec_cannot_be_deleted_or_started_again():
    assert _exec_code_of(TaskState.RUNNING, TaskEvent.DELETE) == Code.FAILED_PRECONDITION
    assert _exec_code_of(TaskState.RUNNING, TaskEvent.START) == Code.FAILED_PRECONDITION
    assert _exec_code_of(TaskState.STOPPED, TaskEvent.START) == Code.FAILED_PRECONDITION


def test_an_exec_exits_only_while_running():
    assert is_legal_for_exec(TaskState.RUNNING, TaskEvent.EXITED)
    for state in (TaskState.CREATED, TaskState.STARTING, TaskState.STOPPED, TaskState.DELETED):
        assert not is_legal_for_exec(state, TaskEvent.EXITED)


def test_every_state_has_an_exec_row_and_no_exec_event_belongs_to_the_init():
    assert set(EXEC_TRANSITIONS) == set(TaskState)
    assert all(TaskEvent.EXEC not in row for row in EXEC_TRANSITIONS.values())
    for event in (TaskEvent.STARTED, TaskEvent.START_FAILED):
        assert all(event not in row for row in TRANSITIONS.values())


def test_exec_is_legal_while_the_task_exists_and_has_not_stopped():
    # runc execs into a created container too (containerd's init_state.go allows it).
    assert next_state("t1", TaskState.CREATED, TaskEvent.EXEC) is TaskState.CREATED
    assert next_state("t1", TaskState.RUNNING, TaskEvent.EXEC) is TaskState.RUNNING
    assert _code_of(TaskState.STOPPED, TaskEvent.EXEC) == Code.FAILED_PRECONDITION
    with pytest.raises(RpcError, match="cannot exec in a stopped task"):
        next_state("t1", TaskState.STOPPED, TaskEvent.EXEC)
    assert _code_of(TaskState.DELETED, TaskEvent.EXEC) == Code.NOT_FOUND
