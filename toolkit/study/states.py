"""The toolkit's words for how a run stands, defined once (torch-free; every layer imports them from here).

Three questions, three vocabularies, never mixed:

- :class:`RunState`: what the runner did with a run (the ledger's ``status``): ``pending`` (not started, or to be
  resumed), ``running`` (an attempt is under way), ``done`` (its process exited 0 and the runner recorded it),
  ``failed`` (it exited otherwise; ``--retry-failed`` runs it again).
- :class:`Outcome`: how the fit itself ended (``result.json``'s ``status``): ``done`` (trained and tested), or
  ``diverged`` (the divergence guard stopped it).
- :class:`Health`: what a run is worth to a table (the report's class of each run and ``RunHealth``'s record):
  only ``finished`` runs enter a mean; the others are listed with their reason.

Each is a ``StrEnum`` whose values are the strings written to the ledger, ``result.json``, W&B and ``runs.csv``, so
files written before these enums read the same. Modules that write them take the plain ``.value`` (their short names:
``study.ledger.DONE``, ``report.health.FINISHED``, ...): a serializer that does not know ``StrEnum`` (W&B's summary
writes a member by its name, ``FINISHED``) must never see a member.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """The ledger's ``status`` of a run."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Outcome(StrEnum):
    """``result.json``'s ``status``: how the fit ended."""

    DONE = "done"
    DIVERGED = "diverged"


class Health(StrEnum):
    """A run's health class (``toolkit/report/health.py`` says how each is decided)."""

    FINISHED = "finished"
    FAILED = "failed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    CORRUPT = "corrupt"
    DEGENERATE = "degenerate"
    NOT_LEARNING = "not learning"
    UNTESTED = "change never tested"
