"""The bad-input battery's one probe format, shared by its test modules and by
``scripts/probe_report.py`` (which runs every probe and counts the outcomes).

A :class:`Probe` is one thing a careless or hostile user does, with the outcome it must have:

* ``error=`` an :class:`eqkern.errors.EqkernError` subclass (and ``match=``, a regex the message
  must contain, e.g. the argument's name): the probe must raise it. Raising something else, or
  the right class with a message that does not say what is wrong, is an *unclear* error; raising
  nothing is *silently wrong*.
* ``check=`` a predicate of the call's result (and the probe's folder): the call must succeed and
  the predicate hold (a correct behaviour). A failed predicate counts as ``fails_as``: *silently
  wrong* by default, *data lost* for probes that guard files, *unclear* for CLI output.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from eqkern.errors import EqkernError

CLEAR, CORRECT = "clear error", "correct"
UNCLEAR, SILENT, LOST = "unclear", "silently wrong", "data lost"
OUTCOMES = (CLEAR, CORRECT, UNCLEAR, SILENT, LOST)


@dataclass(frozen=True)
class Probe:
    id: str
    call: Callable[[Path], Any]              # gets an empty folder of its own
    error: type[BaseException] | None = None
    match: str | None = None
    check: Callable[[Any, Path], bool] | None = None
    fails_as: str = SILENT

    def __post_init__(self):
        assert (self.error is None) != (self.check is None), f"{self.id}: error= or check="
        assert self.error is None or issubclass(self.error, EqkernError), self.id
        assert self.fails_as in (SILENT, LOST, UNCLEAR), self.id


def outcome(probe: Probe, folder: Path) -> tuple[str, str]:
    """``(category, detail)`` of running ``probe`` in ``folder``."""
    try:
        result = probe.call(folder)
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        text = f"{type(exc).__name__}: {exc}"
        if probe.error is None:
            return UNCLEAR, f"raised {text}\n{traceback.format_exc()}"
        if not isinstance(exc, probe.error):
            return UNCLEAR, f"expected {probe.error.__name__}, raised {text}\n{traceback.format_exc()}"
        if probe.match is not None and not re.search(probe.match, str(exc)):
            return UNCLEAR, f"{text}: does not match {probe.match!r}"
        return CLEAR, text
    if probe.error is not None:
        return SILENT, f"expected {probe.error.__name__}, returned {result!r:.200}"
    try:
        ok = probe.check(result, folder)
    except Exception as exc:  # noqa: BLE001
        return probe.fails_as, f"check raised {type(exc).__name__}: {exc}"
    return (CORRECT, f"returned {result!r:.200}") if ok else (probe.fails_as, f"check failed on {result!r:.300}")


def assert_probe(probe: Probe, folder: Path) -> None:
    category, detail = outcome(probe, folder)
    print(f"{probe.id}: {category}: {detail}")
    assert category in (CLEAR, CORRECT), f"{probe.id}: {category}: {detail}"


def ids(probes) -> list[str]:
    names = [p.id for p in probes]
    assert len(set(names)) == len(names), "probe ids must be unique"
    return names
