"""The table of hostile-user cases (hostile_cases.CASES), each run by the real console script.

The commands run concurrently in a pool (most are fast one-line refusals whose time is the
interpreter and torch starting) before the first case is checked; each case is then its own
test, with the command's output in its failure message."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hostile_cases import CASES
from hostile_harness import check_outcome, run_case

WORKERS = int(os.environ.get("EXITFLOW_HOSTILE_WORKERS", "4"))


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """Every case of the table, run once (only those selected, when -k selects some)."""
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.module.__name__ == request.module.__name__ and hasattr(item, "callspec")
    }
    cases = [c for c in CASES if c.id in wanted]
    trained = request.getfixturevalue("trained") if any(c.trained for c in cases) else None
    base = tmp_path_factory.mktemp("hostile_cases")

    def one(i_case):
        i, case = i_case
        try:
            return case.id, run_case(case, base / f"{i:03d}", trained)
        except Exception as err:  # a broken setup fails its own case, not the table
            return case.id, err

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return dict(pool.map(one, enumerate(cases)))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case, outcomes):
    outcome = outcomes[case.id]
    if isinstance(outcome, Exception):
        raise outcome
    check_outcome(outcome)
