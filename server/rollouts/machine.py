"""The rollout state machine (pure): one table of (state, event) -> state.

    running --pause--> paused --resume--> running
    running --advance--> running          (next stage)
    running --complete--> completed       (advance past the last stage; version becomes stable)
    running --halt--> halted --resume--> running   (error threshold crossed)
    running|paused|halted --abort--> aborted

``completed`` and ``aborted`` are final.  Every other pair raises
``IllegalTransition`` and nothing changes.

A schedule is not a state (issue 21 item 2): a rollout with ``starts_at`` or maintenance windows is
``running`` from its creation, and is *open* or *closed* at any instant (``service.schedule``, a pure
function of its start, its windows and the time, ``windows.py``).  Closed, it makes no new offers and
the automatic ``advance``/``complete`` (and a shadow stage's promotion) wait; ``halt`` still happens,
cars already offered go on, and operator events (pause, resume, advance, abort) are unchanged.  A
``scheduled`` state would need a timed ``start`` event for every rollout and still could not say
"between windows"; one predicate covers both.
"""

from __future__ import annotations

from server.errors import IllegalTransition

STATES = ("running", "paused", "halted", "completed", "aborted")
EVENTS = ("pause", "resume", "advance", "complete", "halt", "abort")
# Rollouts whose reached stages still receive offers.  Paused keeps offering to the
# stages already reached (it only stops progress); halted and aborted stop offers.
OFFERING = frozenset({"running", "paused"})
FINAL = frozenset({"completed", "aborted"})

TRANSITIONS: dict[tuple[str, str], str] = {
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("halted", "resume"): "running",
    ("running", "advance"): "running",
    ("running", "complete"): "completed",
    ("running", "halt"): "halted",
    ("running", "abort"): "aborted",
    ("paused", "abort"): "aborted",
    ("halted", "abort"): "aborted",
}


def transition(state: str, event: str) -> str:
    """The state after ``event`` in ``state``.

    Raises:
        IllegalTransition: ``event`` is not allowed in ``state``.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e for (s, e) in TRANSITIONS if s == state)
        hint = f"allowed: {', '.join(allowed)}" if allowed else "the rollout is finished"
        raise IllegalTransition(f"cannot {event} a rollout that is {state} ({hint})") from None
