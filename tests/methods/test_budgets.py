"""Each method knows the budget it needs: below its declared useful minimum one note says so
(what to expect and what to use instead), at or above it nothing is said."""

from __future__ import annotations

import pytest

from diffpir_rt.engine import DEFAULT_METHOD, DiffPIRError, config_class, configure, restoration_names


def _configured(method: str, steps: int):
    cls = config_class(method)
    try:
        return configure(method, cls.tasks[0], sigma_n=0.05, overrides={"steps": steps})
    except DiffPIRError:
        return None  # a budget the method's schedule cannot take (e.g. a jump length)


@pytest.mark.parametrize("method", [m for m in restoration_names() if config_class(m).min_useful_steps > 1])
def test_a_budget_below_the_useful_minimum_is_said_once(method: str) -> None:
    minimum = config_class(method).min_useful_steps
    below = _configured(method, minimum - 1)
    if below is None:
        pytest.skip(f"{method}: {minimum - 1} steps is refused by its schedule")
    notes = [n for n in below.notes if "below the" in n]
    assert len(notes) == 1, below.notes
    assert f"use --steps {minimum} or more" in notes[0]
    assert ("--method " + DEFAULT_METHOD in notes[0]) == (method != DEFAULT_METHOD)
    at = _configured(method, minimum)
    assert at is not None and not [n for n in at.notes if "below the" in n], at.notes

