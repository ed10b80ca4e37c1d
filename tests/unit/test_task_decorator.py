"""``@task`` itself: its bare form, its options checked on decoration, what ``help()`` shows."""

from __future__ import annotations

import datetime
import inspect
import math
import pydoc
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from dispatcher.publish import RegistrationError, registry, submit_task, task
from dispatcher.testing import captured, eager
from support import tasks


def test_a_bare_task_registers_the_function_with_the_default_options() -> None:
    assert registry.get("support.tasks.tidy") is not None
    assert registry.get("support.tasks.Sweep") is not None
    assert tasks.tidy(3) == 3  # still the function
    with eager() as mode:
        submission = tasks.tidy.delay(4)
        swept = tasks.Sweep.delay("hall")
    assert submission.message["task"] == "support.tasks.tidy"
    assert [mode.run_of(submission).result, mode.run_of(swept).result] == [4, "hall"]


@pytest.mark.parametrize("given", ["emails", None, 5, b"q"])
def test_a_positional_option_is_refused_saying_options_are_keywords(given: Any) -> None:
    with pytest.raises(RegistrationError) as refused:
        task(given)
    assert str(refused.value).startswith(
        f"@task takes its options as keywords, not {given!r} as a positional argument: "
        "write @task(queue='...')"
    )


def test_a_queue_function_by_keyword_still_works() -> None:
    with captured() as capture:
        tasks.dynamic.delay()
    assert capture.tasks[0].submission.channel == "support_dynamic"


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"bind": "yes"}, "@task option bind must be True or False, not str 'yes'"),
        ({"bind": 1}, "@task option bind must be True or False, not int 1"),
        ({"bind": None}, "@task option bind must be True or False, not NoneType None"),
        ({"decorate": "no"}, "@task option decorate must be True or False, not str 'no'"),
        ({"decorate": 0}, "@task option decorate must be True or False, not int 0"),
        ({"name": 5}, "@task option name must be a string, not int 5"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_on_decoration(
    options: dict[str, Any], said: str
) -> None:
    with pytest.raises(RegistrationError) as refused:
        task(**options)
    assert str(refused.value) == said


def test_delay_shows_the_arguments_callers_pass_and_says_what_it_does() -> None:
    assert str(inspect.signature(tasks.bound.delay)) == "(value: int) -> Submission"
    assert str(inspect.signature(tasks.Report.delay)) == "(period: str) -> Submission"
    assert str(inspect.signature(tasks.send_email.adelay)) == (
        "(to: str, subject: str = 'hello') -> Submission"
    )
    shown = pydoc.render_doc(tasks.bound.delay, renderer=pydoc.plaintext)
    assert "delay(value: int) -> Submission" in shown
    assert "Submit the task support.renamed with these arguments" in shown


def test_apply_async_shows_its_options() -> None:
    for method, connection in [
        (tasks.add.apply_async, "connection: Connection[Any] | None = None"),
        (tasks.add.aapply_async, "connection: AsyncConnection[Any] | None = None"),
    ]:
        signature = str(inspect.signature(method))
        assert signature.startswith(
            "(args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, *, "
            "queue: Queue = None, uuid: str | None = None, timeout: float | None = None, "
        )
        assert connection in signature
        assert signature.endswith("processor_options: ProcessorOptions = None) -> Submission")
        assert "options overriding its defaults" in (method.__doc__ or "")


NO_NUMBER = "which is no number of JSON: give an int or a float"


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"timeout": Decimal("1.5")}, f"timeout: expected number, got Decimal('1.5'), {NO_NUMBER}"),
        ({"timeout": Decimal("NaN")}, f"timeout: expected number, got Decimal('NaN'), {NO_NUMBER}"),
        ({"delay": Fraction(1, 3)}, f"delay: expected number, got Fraction(1, 3), {NO_NUMBER}"),
        ({"delay": Decimal("sNaN")}, f"delay: expected number, got Decimal('sNaN'), {NO_NUMBER}"),
        ({"timeout": math.nan}, "timeout: nan is not valid in JSON"),
        ({"delay": datetime.timedelta(seconds=5)}, "delay: expected number, got timedelta "),
    ],
)
def test_a_default_json_cannot_carry_is_refused_naming_the_option(
    options: dict[str, Any], said: str
) -> None:
    def work() -> None:
        """A task."""

    with pytest.raises(RegistrationError) as refused:
        task(name="myapp.tasks.odd_default", **options)(work)
    assert str(refused.value).startswith(f"cannot register myapp.tasks.odd_default: {said}")


def test_the_submission_docstrings_name_the_config_errors_too() -> None:
    for method in (tasks.add.delay, tasks.add.apply_async, tasks.add.adelay, submit_task):
        doc = method.__doc__ or ""
        assert ":raises PublishError:" in doc
        assert ":raises ConfigError:" in doc
        assert "``NotConfiguredError`` when none was given" in doc
