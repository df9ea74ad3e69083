"""Code-safety guardrail: dangerous commands and code inside the response's code blocks.

Code blocks are fenced (```` ``` ```` or ``~~~``, any info string) and indented (four spaces or a
tab after a blank line). Findings on comment-only lines (``#``, ``//``, ``--``, ``;``, ``REM``) are
skipped: an answer that warns "never run rm -rf /" in a comment is not running it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType, GuardrailViolation, Severity
from certus.sidecar.guardrails.base import RESPONSE, Source, make_violation

GT = GuardrailType.CODE_SAFETY
_I = re.I

_FENCE_OPEN = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})[^\n]*$", re.M)


@dataclass(frozen=True, slots=True)
class CodeBlock:
    start: int  # of the code (after the fence line)
    end: int


def code_blocks(text: str) -> list[CodeBlock]:
    blocks: list[CodeBlock] = []
    fenced: list[tuple[int, int]] = []
    pos = 0
    while True:
        m = _FENCE_OPEN.search(text, pos)
        if not m:
            break
        fence = m.group(1)
        body_start = m.end() + 1 if m.end() < len(text) else m.end()
        close = re.compile(rf"^[ ]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M).search(text, body_start)
        body_end = close.start() if close else len(text)  # an unclosed fence runs to the end
        blocks.append(CodeBlock(body_start, max(body_start, body_end)))
        fenced.append((m.start(), close.end() if close else len(text)))
        pos = close.end() if close else len(text)
    # indented blocks outside fences
    lines = text.splitlines(keepends=True)
    offset, prev_blank, cur = 0, True, None
    starts = [s for s, _ in fenced]
    for line in lines:
        k = bisect.bisect_right(starts, offset) - 1
        in_fence = k >= 0 and offset < fenced[k][1]
        indented = (line.startswith("    ") or line.startswith("\t")) and line.strip() != ""
        if not in_fence and indented and (cur is not None or prev_blank):
            cur = (cur[0], offset + len(line)) if cur else (offset, offset + len(line))
        elif cur is not None and line.strip() == "" and not in_fence:
            pass  # blank lines may sit inside an indented block
        else:
            if cur is not None:
                blocks.append(CodeBlock(*cur))
            cur = None
        prev_blank = line.strip() == ""
        offset += len(line)
    if cur is not None:
        blocks.append(CodeBlock(*cur))
    return sorted(blocks, key=lambda b: b.start)


@dataclass(frozen=True, slots=True)
class CodeRule:
    detector: str
    pattern: re.Pattern[str]
    severity: Severity
    confidence: float
    remediation: str


_TAINT = (
    r"(?:input\s*\(|raw_input\s*\(|request\.|req\.(?:body|query|params|headers|cookies)|sys\.argv|argv\[|"
    r"os\.environ|getenv\(|params\[|\$_(?:GET|POST|REQUEST|COOKIE)|location\.|document\.|window\.location|"
    r"user_?input|user_?data|untrusted|payload|data\b|body\b|query\b|conn\.recv|sock(?:et)?\.recv|\.recv\(|stdin)"
)
_ROOTISH = r"(?:/\*?|/(?:bin|boot|dev|etc|home|lib|lib64|opt|root|sbin|srv|sys|usr|var)/?\*?|~/?\*?|\$HOME/?\*?|\$\{HOME\}/?|\*|\.\*|/\s*--no-preserve-root)"

RULES: tuple[CodeRule, ...] = (
    CodeRule("rm_rf", re.compile(
        rf"\brm\s+(?:-[a-zA-Z]*(?:r[a-zA-Z]*f|f[a-zA-Z]*r)[a-zA-Z]*|-[rR]\s+-f|-f\s+-[rR]|--recursive\s+--force|--force\s+--recursive)"
        rf"(?:\s+--no-preserve-root)?\s+[\"']?{_ROOTISH}[\"']?(?=\s|;|&|\||$)", re.M), Severity.CRITICAL, 0.95,
        "Never delete the root, home or system directories recursively; scope the path."),
    CodeRule("rm_rf", re.compile(r"\brm\s+-[a-zA-Z]*[rR][a-zA-Z]*\s+--no-preserve-root\b"), Severity.CRITICAL, 0.97,
        "Never delete the root directory."),
    CodeRule("curl_pipe_shell", re.compile(
        r"\b(?:curl|wget|fetch|iwr|Invoke-WebRequest)\b[^\n|;]*\|\s*(?:sudo\s+(?:-\S+\s+)*)?(?:ba|z|k|da|fi)?sh\b"
        r"|\b(?:curl|wget)\b[^\n|;]*\|\s*(?:sudo\s+)?(?:python[0-9.]*|perl|ruby|node)\b"
        r"|\b(?:ba|z)?sh\s+(?:-c\s+)?[\"']?\$\((?:curl|wget)\b|\b(?:ba|z)?sh\s+<\(\s*(?:curl|wget)\b"
        r"|\biex\s*\(?\s*\(?(?:New-Object\s+Net\.WebClient\)?\.DownloadString|iwr|Invoke-WebRequest)", _I),
        Severity.HIGH, 0.9, "Download the script, verify its checksum/signature and review it before running it."),
    CodeRule("reverse_shell", re.compile(
        r"/dev/(?:tcp|udp)/[\w.-]+/\d+|\b(?:nc|ncat|netcat)\b[^\n]*\s-(?:[a-zA-Z]*e|c)\s+\S*(?:sh|cmd(?:\.exe)?)\b"
        r"|\bmkfifo\b[^\n]*\b(?:nc|ncat|netcat)\b|\bsocat\b[^\n]*\bexec:[^\n]*(?:sh|bash)"
        r"|socket\.socket\([^\n]*\)[\s\S]{0,300}?(?:subprocess\.(?:call|Popen|run)\(\s*\[?\s*[\"']/bin/(?:ba)?sh|pty\.spawn\(\s*[\"']/bin/(?:ba)?sh|os\.dup2\()", _I),
        Severity.CRITICAL, 0.95, "Remove the reverse shell: it hands a remote host an interactive shell."),
    CodeRule("fork_bomb", re.compile(r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:|\bwhile\s*\(?\s*true\s*\)?\s*;?\s*do\s+\$0\s*&\s*\$0", _I),
        Severity.CRITICAL, 0.97, "Remove the fork bomb."),
    CodeRule("chmod_777", re.compile(r"\bchmod\s+(?:-[a-zA-Z]*R[a-zA-Z]*\s+)?(?:0?777|a\+rwx|ugo\+rwx)\s+[\"']?(?:/|/(?:etc|usr|var|bin|home|root)\b|~)[\"']?(?=\s|;|$)", re.M),
        Severity.HIGH, 0.9, "Do not make system paths world-writable; grant the narrowest permissions."),
    CodeRule("chmod_777", re.compile(r"\bchmod\s+-[a-zA-Z]*R[a-zA-Z]*\s+(?:0?777|a\+rwx)\b"), Severity.MEDIUM, 0.75,
        "Avoid recursive world-writable permissions."),
    CodeRule("disk_wipe", re.compile(r"\bdd\b[^\n]*\bof=/dev/(?:sd[a-z]|nvme\d|hd[a-z]|disk\d|mmcblk\d)|\bmkfs(?:\.\w+)?\s+(?:-\S+\s+)*/dev/(?:sd[a-z]|nvme\d|hd[a-z])|>\s*/dev/sd[a-z]\b"),
        Severity.CRITICAL, 0.9, "Writing to a raw disk device destroys its data; double-check the target."),
    CodeRule("sql_drop", re.compile(r"\bDROP\s+(?:TABLE|DATABASE|SCHEMA|USER|ROLE)\b|\bTRUNCATE\s+(?:TABLE\s+)?[\w.\"`\[\]]+", _I),
        Severity.HIGH, 0.85, "Destructive DDL: require a backup, a transaction and explicit confirmation."),
    CodeRule("eval_untrusted", re.compile(rf"\b(?:eval|exec|Function|execfile|compile)\s*\(\s*[^)\n]*?{_TAINT}", _I),
        Severity.HIGH, 0.85, "Never evaluate untrusted input; parse it (json, ast.literal_eval) instead."),
    CodeRule("pickle_untrusted", re.compile(rf"\b(?:pickle|cPickle|dill|joblib|shelve)\.loads?\s*\(\s*[^)\n]*?{_TAINT}|\bmarshal\.loads\s*\(", _I),
        Severity.HIGH, 0.85, "Unpickling untrusted data runs arbitrary code; use a data format such as JSON."),
    CodeRule("yaml_unsafe_load", re.compile(r"\byaml\.(?:load|load_all)\s*\((?![^)\n]*Loader\s*=\s*(?:yaml\.)?(?:Safe|CSafe)Loader)[^)\n]*\)|\byaml\.unsafe_load\s*\(|Loader\s*=\s*(?:yaml\.)?(?:Unsafe)?Loader\b(?<!SafeLoader)"),
        Severity.MEDIUM, 0.7, "Use yaml.safe_load."),
    CodeRule("shell_injection", re.compile(
        r"\bsubprocess\.(?:run|call|Popen|check_output|check_call|getoutput|getstatusoutput)\s*\((?=[^\n]*shell\s*=\s*True)[^\n]*(?:f[\"']|\.format\(|%\s*\(?\w|\+\s*\w|"
        + _TAINT + r")"
        r"|\bos\.(?:system|popen)\s*\(\s*(?:f[\"']|[^)\n]*(?:\.format\(|%\s*\(?\w|[\"']\s*\+|" + _TAINT + r"))"
        r"|\bchild_process\.exec(?:Sync)?\s*\(\s*(?:`[^`]*\$\{|[^)\n]*\+)", _I),
        Severity.HIGH, 0.85, "Pass an argument list without shell=True; never build shell commands from input."),
    CodeRule("tls_verify_disabled", re.compile(
        r"\bverify\s*=\s*False\b|\brejectUnauthorized\s*:\s*false\b|\bInsecureSkipVerify\s*:\s*true\b"
        r"|\bNODE_TLS_REJECT_UNAUTHORIZED\s*=\s*[\"']?0\b|\bssl\._create_unverified_context\b|\bcheck_hostname\s*=\s*False\b"
        r"|\bverify_mode\s*=\s*ssl\.CERT_NONE\b|\bcert_reqs\s*=\s*[\"']?(?:ssl\.)?CERT_NONE\b|\bcurl\b[^\n]*\s(?:-k|--insecure)\b"
        r"|\bwget\b[^\n]*--no-check-certificate\b|\bsslVerify\s*=\s*false\b|\bstrict-ssl\s+false\b|\bServerCertificateValidationCallback\s*=[^\n]*=>\s*true",
        ), Severity.MEDIUM, 0.85, "Keep TLS certificate verification on; trust the right CA instead."),
)

_TAINTED_NAME = re.compile(rf"^[ \t]*(?:(?:const|let|var|my)\s+)?\$?([A-Za-z_]\w*)\s*=\s*(?:[\w.]+\()?\s*{_TAINT}", re.M | re.I)
_SINK_OF = (
    ("eval_untrusted", r"\b(?:eval|exec|Function|execfile)\s*\(\s*(?:[\w.]+\()?\s*{name}\b", Severity.HIGH, 0.8, "Never evaluate untrusted input; parse it (json, ast.literal_eval) instead."),
    ("pickle_untrusted", r"\b(?:pickle|cPickle|dill|joblib)\.loads?\s*\(\s*{name}\b", Severity.HIGH, 0.8, "Unpickling untrusted data runs arbitrary code; use a data format such as JSON."),
    ("shell_injection", r"\bos\.(?:system|popen)\s*\(\s*{name}\b", Severity.HIGH, 0.8, "Never build shell commands from input; pass an argument list."),
)

_SQL_STATEMENT = re.compile(
    r"\b(DELETE\s+FROM|UPDATE)\b[^;\"'`]*?(?=;|[\"'`]|\n[ \t]*\n|\n\s*(?:SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|BEGIN|COMMIT|END|GO)\b|\Z)",
    re.I,
)
_COMMENT_LINE = re.compile(r"^\s*(?:#|//|--|;|REM\b|\*|/\*)", re.I)


class CodeSafetyGuardrail:
    guardrail_type = GT

    def detect(self, inp: EvaluateInput, cfg: GuardrailConfig) -> list[GuardrailViolation]:
        src = Source(RESPONSE, inp.response)
        text = src.text
        out: list[GuardrailViolation] = []
        for block in code_blocks(text):
            code = text[block.start : block.end]
            hits: list[tuple[int, int, CodeRule | tuple[str, Severity, float, str]]] = []
            for rule in RULES:
                for m in rule.pattern.finditer(code):
                    hits.append((m.start(), m.end(), rule))
            # one step of taint tracking: a name assigned from input, later passed to a sink
            for tm in _TAINTED_NAME.finditer(code):
                for detector, sink, sev, conf, rem in _SINK_OF:
                    for m in re.finditer(sink.format(name=re.escape(tm.group(1))), code[tm.end() :]):
                        hits.append((tm.end() + m.start(), tm.end() + m.end(), (detector, sev, conf, rem)))
            for m in _SQL_STATEMENT.finditer(code):
                stmt = m.group(0)
                if re.search(r"\bWHERE\b", stmt, re.I):
                    continue
                if m.group(1).upper().startswith("DELETE"):
                    if not re.match(r"DELETE\s+FROM\s+[\w.\"`\[\]]+\s*$", stmt.strip(), re.I):
                        continue  # USING/JOIN forms or a prose sentence: not a bare delete
                    hits.append((m.start(), m.end(), ("sql_delete_without_where", Severity.HIGH, 0.85, "Add a WHERE clause (and run it in a transaction).")))
                elif re.match(r"UPDATE\s+[\w.\"`\[\]]+\s+SET\b", stmt, re.I):
                    hits.append((m.start(), m.end(), ("sql_update_without_where", Severity.MEDIUM, 0.8, "Add a WHERE clause: this updates every row.")))
            seen: list[tuple[int, int, str]] = []
            for s, e, r in sorted(hits, key=lambda h: (h[0], -h[1])):
                detector, sev, conf, rem = (r.detector, r.severity, r.confidence, r.remediation) if isinstance(r, CodeRule) else r
                line_start = code.rfind("\n", 0, s) + 1
                if _COMMENT_LINE.match(code[line_start:s + 1]):
                    continue
                if any(d == detector and ss < e and s < ee for ss, ee, d in seen):
                    continue
                seen.append((s, e, detector))
                out.append(make_violation(GT, source=src, start=block.start + s, end=block.start + e, severity=sev, confidence=conf, detector=detector, remediation=rem))
        return out
