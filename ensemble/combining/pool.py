"""The candidate pool: each member's extra probability sources for ``combiner.greedy``.

A candidate is (member, weights, view): a snapshot of the member's training other than
the one it keeps (``best``, ``last``, ``ema``, ``swa``, ``probe``), and/or the member seen
through another eval view. It is declared under ``members.N.candidates``, made while its
member trains (no extra training), saved beside it as ``members/<member>@<weights>[+<view>]/``
(weights, OOB probabilities) and scored on val and test like a member (rows after the
members' in ``predictions/<split>_proba.npy``). Strategies combine the members; a
strategy with ``pool`` set (greedy, by default) selects over members + candidates, and
``predict`` runs only the ones it gives weight to. No torch here.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence


class Candidate(NamedTuple):
    """One pool candidate of member ``of``: its name, weights snapshot and eval view."""

    name: str
    of: str
    weights: str
    view: str


def member_candidates(spec) -> list[Candidate]:
    """The candidates a member spec declares, in a fixed order (weights, then views)."""
    own = spec.train.select
    snaps = [own] + [w for w in spec.candidates.weights if w != own]
    views = [spec.view] + [v for v in spec.candidates.views if v != spec.view]
    out = []
    for snap in snaps:
        for view in views:
            if (snap, view) == (own, spec.view):
                continue
            name = f"{spec.name}@{snap}" + ("" if view == spec.view else f"+{view}")
            out.append(Candidate(name, spec.name, snap, view))
    return out


def member_of(name: str) -> str:
    """The member a pool row belongs to: ``lite0`` for ``lite0``, ``lite0@ema`` or ``lite0@last+crop``."""
    return name.split("@")[0]


def pool_candidates(specs: Sequence) -> list[Candidate]:
    """Every member's candidates, member by member (the pool's rows after the members)."""
    return [c for spec in specs for c in member_candidates(spec)]


def candidate_spec(spec, cand: Candidate):
    """The member spec a candidate is built and scored with (its name and view; no candidates of its own)."""
    from ..config import CandidatesConfig

    return dataclasses.replace(spec, name=cand.name, view=cand.view, candidates=CandidatesConfig())


def candidate_specs(specs: Sequence) -> list:
    """One spec per pool candidate, in :func:`pool_candidates` order."""
    by_name = {s.name: s for s in specs}
    return [candidate_spec(by_name[c.of], c) for c in pool_candidates(specs)]
