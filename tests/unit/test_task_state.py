"""The task state machine: which RPC is legal in which state, and the code an illegal one gets."""

import pytest

from shim.errors import Code, RpcError
from shim.task_state import TRANSITIONS, TaskEvent, TaskState, is_legal, next_state


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
