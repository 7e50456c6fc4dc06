"""Errors the event loop reports to nobody (unawaited failed tasks, callbacks) fail the test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

INNER_CONFTEST = """
import asyncio

import pytest_asyncio

from tests.conftest import pytest_collection_finish, unhandled_loop_errors_fail_the_test  # noqa: F401


def outer_handler(loop, context):
    loop.default_exception_handler(context)


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def outer_handler_restored_after_each_test():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(outer_handler)
    yield
    assert loop.get_exception_handler() is outer_handler, "a test's exception handler was left installed"
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytest run of its own, with Vigil's conftest guard and the same event-loop settings."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = session
        asyncio_default_test_loop_scope = session
        """
    )
    pytester.makeconftest(INNER_CONFTEST)
    return pytester


def run(inner: pytest.Pytester) -> pytest.RunResult:
    return inner.runpytest_subprocess("-p", "no:cacheprovider")


def test_a_failed_task_nobody_awaited_fails_the_test_that_leaked_it(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio

        async def test_leaks_a_failed_task():
            async def fail():
                me = asyncio.current_task()  # a reference cycle: only the garbage collector frees this task
                raise RuntimeError("nobody awaits me")

            asyncio.get_running_loop().create_task(fail())
            await asyncio.sleep(0)

        async def test_runs_next():
            await asyncio.sleep(0)
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_failed_task*",
            "*the event loop reported errors nobody handled:*",
            "*Task exception was never retrieved*",
            "*RuntimeError: nobody awaits me*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_runs_next*")


def test_an_exception_in_a_callback_fails_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio

        def explode():
            raise ValueError("callback went wrong")

        async def test_schedules_a_failing_callback():
            asyncio.get_running_loop().call_soon(explode)
            await asyncio.sleep(0)
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*Exception in callback*explode*", "*ValueError: callback went wrong*"])


def test_a_sync_test_whose_async_fixture_leaks_a_failed_task_fails(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio

        import pytest

        @pytest.fixture
        async def leaky():
            async def fail():
                raise RuntimeError("leaked by a fixture")

            asyncio.get_running_loop().create_task(fail())
            await asyncio.sleep(0)
            yield

        def test_sync(leaky):
            pass
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_sync*", "*RuntimeError: leaked by a fixture*"])


def test_clean_tests_pass_and_the_previous_handler_is_restored(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio

        async def test_awaits_its_task():
            async def fail():
                raise RuntimeError("handled")

            task = asyncio.get_running_loop().create_task(fail())
            await asyncio.wait({task})
            assert isinstance(task.exception(), RuntimeError)

        def test_sync():
            pass
        """
    )
    result = run(inner)
    result.assert_outcomes(passed=2)
