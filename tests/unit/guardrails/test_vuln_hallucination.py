"""Vulnerability-hallucination guardrail: advisory ids and package versions vs the context."""

from __future__ import annotations

from certus.sidecar.domain import GuardrailType
from certus.sidecar.guardrails import GuardrailSuite

from .conftest import assert_no_content, req, scan_one, text_of

VH = GuardrailType.VULN_HALLUCINATION
LOG4J = "Apache Log4j2 2.0-beta9 through 2.15.0 is affected by CVE-2021-44228 (Log4Shell), fixed in 2.17.1."
LODASH = "Advisory GHSA-jfh8-c2jp-5v3q: prototype pollution in lodash before 4.17.21."


def test_cve_in_context_passes(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Log4Shell is CVE-2021-44228; upgrade to 2.17.1.", context=[LOG4J])
    assert scan_one(rules_suite, VH, inp) == []


def test_cve_not_in_context(rules_suite: GuardrailSuite) -> None:
    inp = req(response="It is CVE-2021-44228 and also CVE-2021-45046.", context=[LOG4J])
    vs = scan_one(rules_suite, VH, inp)
    assert [(v.detector, text_of(inp, v), v.confidence) for v in vs] == [("cve_not_in_context", "CVE-2021-45046", 0.9)]
    assert_no_content(inp, vs)


def test_case_and_dash_variants_match_the_context(rules_suite: GuardrailSuite) -> None:
    inp = req(response="See ghsa-jfh8-c2jp-5v3q and cve\u20112021\u201144228.", context=[LODASH, LOG4J])
    assert scan_one(rules_suite, VH, inp) == []


def test_ghsa_not_in_context(rules_suite: GuardrailSuite) -> None:
    inp = req(response="See GHSA-p6mc-m468-83gw for details.", context=[LODASH])
    assert [v.detector for v in scan_one(rules_suite, VH, inp)] == ["ghsa_not_in_context"]


def test_no_context_lowers_confidence(rules_suite: GuardrailSuite) -> None:
    vs = scan_one(rules_suite, VH, req(response="Known issue: CVE-2022-22965."))
    assert [(v.detector, v.confidence) for v in vs] == [("cve_not_in_context", 0.6)]


def test_impossible_year(rules_suite: GuardrailSuite) -> None:
    vs = scan_one(rules_suite, VH, req(response="Exploited via CVE-1988-0001.", context=[LOG4J]))
    assert [v.detector for v in vs] == ["cve_malformed"]


def test_package_version_claims(rules_suite: GuardrailSuite) -> None:
    bad = req(response="lodash@4.17.15 is vulnerable to prototype pollution.", context=[LODASH])
    assert [(v.detector, text_of(bad, v)) for v in scan_one(rules_suite, VH, bad)] == [("package_version_not_in_context", "lodash@4.17.15")]
    ok = req(response="The fix is lodash@4.17.21, which patched the vulnerability.", context=[LODASH])
    assert scan_one(rules_suite, VH, ok) == []
    no_vuln_talk = req(response="Install express@4.18.2 to follow the tutorial.", context=["Express is a web framework."])
    assert scan_one(rules_suite, VH, no_vuln_talk) == []


def test_email_is_not_a_package_claim(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Report vulnerabilities to security@example.com.", context=[])
    assert scan_one(rules_suite, VH, inp) == []
