"""The openspf RFC 7208 test suite (shipped in pyspf's sdist, BSD-licensed: see
tests/data/rfc7208-tests.LICENSE) run through the gateway's SPF path.

Every scenario's zone is served by the real test DNS server on 127.0.0.1, and
every case goes through ``check_spf`` -> our pyspf ``dns()`` override ->
``Resolver`` (dnspython, UDP/TCP) exactly as in the daemon. The zone data is
translated the way pyspf's own driver (test/testspf.py) does: ``SPF`` records
are also published as ``TXT`` unless the name has TXT records of its own, a
``TXT: NONE`` entry suppresses that, and ``TIMEOUT`` makes the name's queries
go unanswered for every type not listed before it.

Cases where the gateway knowingly diverges are listed in ``KNOWN_DIVERGENT``
with the reason; they run as strict xfails, so a fix shows up as a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import spf
import yaml

from sesmail_gateway.checks.dns import Resolver
from sesmail_gateway.checks.spf import check_spf
from tests.dnsserver import TestDNSServer

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc7208-tests.yml"
QUERY_TYPES = ("A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME")

#: test id -> why the gateway's answer differs from the suite's.
KNOWN_DIVERGENT: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    id: str
    scenario: int
    host: str
    helo: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None


@dataclass
class Scenario:
    records: list[tuple[str, str, Any]]
    timeouts: list[tuple[str, tuple[str, ...]]]


def _zone(zonedata: dict[str, list[Any]]) -> Scenario:
    scenario = Scenario([], [])
    for name, entries in zonedata.items():
        seen_types: list[str] = []
        spf_values: list[Any] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                scenario.timeouts.append((name, tuple(t for t in QUERY_TYPES if t not in seen_types)))
                break
            (rtype, value), = entry.items()
            has_txt = has_txt or rtype == "TXT"
            if rtype == "SPF":
                spf_values.append(value)
            if value == "NONE":
                continue
            seen_types.append(rtype)
            scenario.records.append((name, rtype, value))
        if not has_txt:
            scenario.records.extend((name, "TXT", value) for value in spf_values if value != "NONE")
    return scenario


def _load() -> tuple[list[Scenario], list[Case]]:
    scenarios: list[Scenario] = []
    cases: list[Case] = []
    with DATA.open("rb") as fp:
        for index, doc in enumerate(yaml.safe_load_all(fp)):
            scenarios.append(_zone(doc["zonedata"]))
            for test_id, t in doc["tests"].items():
                results = t["result"] if isinstance(t["result"], list) else [t["result"]]
                cases.append(Case(test_id, index, str(t["host"]), str(t["helo"]), str(t["mailfrom"]),
                                  tuple(results), t.get("explanation")))
    return scenarios, cases


SCENARIOS, CASES = _load()
#: how many of the suite's cases the gateway passes: 203 of 203 (pyspf 2.0.14's copy).
EXPECTED_PASSES = len(CASES) - len(KNOWN_DIVERGENT)


@pytest.fixture(scope="module")
def suite_dns() -> Iterator[tuple[TestDNSServer, Resolver]]:
    server = TestDNSServer().start()
    # no cache (max_entries=0): every scenario re-uses names with other data
    resolver = Resolver([server.address], timeout=0.3, max_entries=0)
    server.loaded = -1  # type: ignore[attr-defined]
    yield server, resolver
    server.stop()


def _serve(server: TestDNSServer, index: int) -> None:
    if getattr(server, "loaded", None) == index:
        return
    server.clear()
    scenario = SCENARIOS[index]
    for name, rtype, value in scenario.records:
        server.add(name, rtype, value)
    for name, rtypes in scenario.timeouts:
        server.set_timeout(name, rtypes=rtypes)
    server.loaded = index  # type: ignore[attr-defined]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = []
        if case.id in KNOWN_DIVERGENT:
            marks.append(pytest.mark.xfail(reason=KNOWN_DIVERGENT[case.id], strict=True))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_rfc7208_case(case: Case, suite_dns: tuple[TestDNSServer, Resolver]) -> None:
    server, resolver = suite_dns
    _serve(server, case.scenario)
    verdict = check_spf(resolver, case.host, case.helo, case.mailfrom)
    assert verdict.result in case.results, f"{case.id}: {verdict}"
    if case.explanation is not None:
        expected = spf.EXPLANATIONS[verdict.result] if case.explanation == "DEFAULT" else case.explanation
        assert verdict.explanation == expected, case.id


def test_rfc7208_suite_size() -> None:
    """The whole suite is loaded, so the pass count above means what it says."""
    assert len(CASES) == 203
    assert len({case.id for case in CASES}) == len(CASES)
    assert EXPECTED_PASSES == 203
