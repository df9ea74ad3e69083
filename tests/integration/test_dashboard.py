"""The web dashboard in a real browser: headless Chromium (Debian's ``chromium`` and its
``chromedriver``, driven by Selenium) loads every page of a real sidecar that scored real requests
(the ONNX model, Presidio, signatures), and the checks read what is rendered. Screenshots are saved
(``CERTUS_SCREENSHOT_DIR``, else pytest's temporary directory; the path is printed).

Also over plain HTTP: bearer-token login and workspace scoping, admin-only pages, the installed
``certus-sidecar dashboard`` on the log from outside the checkout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.protos import pb
from certus.sidecar.security.tokens import hash_token
from certus.sidecar.signing import Envelope, canonical_json
from certus.sidecar.toolkit.calibrate import calibrate_file
from tests.conftest import OUTSIDE, RunningSidecar, cli_argv, cli_env, free_port, make_config, start_sidecar, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)",
)

CONTEXT = [
    "The Eiffel Tower was completed in 1889 and is 330 metres tall. It stands in Paris on the Champ de Mars.",
    "Gustave Eiffel's company designed and built the tower for the 1889 World's Fair.",
]
QUERY = "When was the Eiffel Tower completed and how tall is it?"
GOOD = "The Eiffel Tower was completed in 1889 and is 330 metres tall."
BAD = "The Eiffel Tower was completed in 1925 and is 95 metres tall. It was designed by Isambard Brunel in London."
PII = "Contact the tour desk at jane.doe@example.com about the Eiffel Tower, completed in 1889."
READER, ADMIN = "dash-reader-token-0123", "dash-admin-token-0123"


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000", "--hide-scrollbars"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(os.environ.get("CERTUS_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {d}")
    return d


def screenshot(driver: Any, shots: Path, name: str) -> Path:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(int(height) + 40, 3000))
    path = shots / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


class Site:
    def __init__(self, sc: RunningSidecar, url: str, answers: dict[str, Any]) -> None:
        self.sc, self.url, self.answers = sc, url, answers

    def status(self, **kw: Any) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/status", timeout=30, **kw)
        r.raise_for_status()
        return r.json()


def evaluate(sc: RunningSidecar, workspace: str, response: str, token: str | None = None, **kw: Any) -> Any:
    md = (("authorization", f"Bearer {token}"),) if token else ()
    return sc.stub.Evaluate(pb.EvaluateRequest(workspace_id=workspace, query=QUERY, response=response, context=CONTEXT, **kw), metadata=md, timeout=60)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    address = f"127.0.0.1:{free_port()}"
    sc = start_sidecar(make_config(tmp, dashboard={"address": address}), encoder=encoder)
    answers = {
        "good": evaluate(sc, "alpha", GOOD),
        "bad": evaluate(sc, "alpha", BAD),
        "pii": evaluate(sc, "beta", PII),
        "good2": evaluate(sc, "beta", GOOD),
        "skipped": evaluate(sc, "beta", GOOD, mode=pb.EVALUATION_MODE_DISABLED),
    }
    s = Site(sc, f"http://{address}", answers)
    wait_until(lambda: s.status()["records"] == len(answers), "the dashboard index to hold every decision")
    yield s
    sc.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    d = browser()
    yield d
    d.quit()


def wait_for(driver: Any, css: str, timeout: float = 120.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def submit(driver: Any, button_id: str) -> None:
    """Click a form's button and wait until the page it leads to has loaded. Chrome answers a
    lookup of a node of a page that has been left with a generic error ("Node with given id does
    not belong to the document"), not only with a stale-element one: both mean the page changed."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(d: Any) -> bool:
        return bool(d.execute_script("return document.readyState") == "complete")

    WebDriverWait(driver, 120).until(loaded)
    old = driver.find_element(By.TAG_NAME, "html")

    def left(_: Any) -> bool:
        try:
            old.is_enabled()
            return False
        except WebDriverException:
            return True

    try:
        driver.find_element(By.ID, button_id).click()
    except WebDriverException:
        if not left(driver):  # the click failed without leaving the page: a real error
            raise
    WebDriverWait(driver, 120).until(left)
    WebDriverWait(driver, 120).until(loaded)


def text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def rows(driver: Any, css: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.CSS_SELECTOR, css)
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def test_overview_shows_the_real_decisions(site: Site, driver: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    a = site.answers
    driver.get(site.url + "/")
    assert text(driver, "#stat-decisions") == "5"
    assert text(driver, "#stat-skipped") == "1"
    fails = sum(1 for r in a.values() if r.outcome == pb.OUTCOME_FAIL)
    assert text(driver, "#stat-fail") == str(fails) and fails >= 1  # the contradicted numbers fail
    # the charts are SVG drawn on the server; their titles are text in the page
    svg = driver.find_element(By.CSS_SELECTOR, "svg[data-chart=outcomes]")
    assert "Decisions per day by outcome" in svg.get_attribute("innerHTML")
    assert driver.find_elements(By.CSS_SELECTOR, "svg[data-chart=metric-faithfulness]")
    metrics = {r[0]: r for r in rows(driver, "#metrics-table")}
    faith = [m.value for r in a.values() for m in r.metrics if m.name == "faithfulness"]
    assert metrics["faithfulness"][1] == str(len(faith))
    assert metrics["faithfulness"][2] == f"{sum(faith) / len(faith):.3f}"  # means are exact
    violations = rows(driver, "#violations-table")
    pii = [v for v in a["pii"].guardrail_violations]
    assert pii and violations[0][0] == "pii" and sum(int(r[2]) for r in violations) == len(pii)
    assert rows(driver, "#skips-table")[0] == [a["skipped"].skip_reason, "1"]
    dims = {(r[0], r[1]): r for r in rows(driver, "#dimensions-table")}
    assert dims[("alpha", a["good"].manifest_uri)][2] == "2"
    screenshot(driver, shots, "overview")
    # filter to one workspace: the page recomputes from the rollups
    Select(driver.find_element(By.ID, "workspace")).select_by_value("beta")
    Select(driver.find_element(By.ID, "unit")).select_by_value("week")
    submit(driver, "apply")
    wait_for(driver, "#stat-decisions")
    assert text(driver, "#stat-decisions") == "3" and "workspace=beta" in driver.current_url
    assert "Decisions per week by outcome" in driver.find_element(By.CSS_SELECTOR, "svg[data-chart=outcomes]").get_attribute("innerHTML")


def test_drill_down_shows_scores_claims_findings_and_signature(site: Site, driver: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    bad = site.answers["bad"]
    site.sc.app.evidence.request_checkpoint().result(30)  # sign a checkpoint over the five records
    driver.get(site.url + "/decisions")
    assert len(rows(driver, "#recent-table")) == 5
    driver.find_element(By.ID, "q").send_keys(bad.evaluation_id)
    submit(driver, "find")
    wait_for(driver, "#metrics")
    assert text(driver, "#outcome") == "fail" and text(driver, "#evidence-id") == bad.evidence_id
    shown = {r[0]: r for r in rows(driver, "#metrics")}
    for m in bad.metrics:
        assert shown[m.name][1] == f"{m.value:.3f}" and shown[m.name][4] == ("pass" if m.passed else "fail")
        if m.HasField("threshold"):
            assert shown[m.name][2] == f"{m.threshold:.3f}"
    claims = rows(driver, "#claims")
    assert len(claims) == len(bad.claims) >= 1
    for row, c in zip(claims, bad.claims):
        assert row[1] == f"char {c.start}-{c.end}" and row[2] == ("yes" if c.supported else "no")
    assert any(r[2] == "no" and r[9] for r in claims)  # an unsupported claim says why
    assert "verified now" in text(driver, "#sig-status")
    record = next(r for r in iter_log(site.sc.cfg.evidence.log_dir) if r.evidence_id == bad.evidence_id)
    assert text(driver, "#chain-seq") == str(record.seq) and text(driver, "#chain-prev") == record.prev_hash
    assert text(driver, "#chain-checkpoint") == "covered by the newest signed checkpoint (tree size 5, its signature verified)"
    screenshot(driver, shots, "decision")
    # the PII decision, opened by evidence_id: type, location and hash of the finding, never the text
    pii = site.answers["pii"]
    driver.get(f"{site.url}/decisions/{pii.evidence_id}")
    found = rows(driver, "#violations")
    v = pii.guardrail_violations[0]
    assert found[0][0] == "pii" and found[0][3] == v.location and found[0][6].startswith(v.content_hash[:20])
    assert "jane.doe" not in driver.page_source
    driver.get(f"{site.url}/decisions/no-such-id")
    assert "No verified decision" in text(driver, "#message")


def test_evidence_page_runs_verify(site: Site, driver: Any, shots: Path) -> None:

    driver.get(site.url + "/evidence")
    assert text(driver, "#ev-records") == "5" and text(driver, "#ev-key") == site.sc.app.evidence.key_id
    assert text(driver, "#sc-breaker") == "closed" and text(driver, "#sc-health") == "healthy"
    assert text(driver, "#ev-last-id") == site.status()["last_evidence_id"]
    submit(driver, "run-verify")
    wait_for(driver, "#verify-verdict")  # the page refreshes until the run ends
    assert text(driver, "#verify-verdict").startswith("OK: 5 records")
    assert "records verified: 5" in text(driver, "#verify-summary")
    screenshot(driver, shots, "evidence")


def test_calibration_page_uploads_scores_and_proposes_a_manifest(site: Site, driver: Any, shots: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    labelled = tmp_path / "labelled.jsonl"
    facts = [
        ("Who designed the tower?", "Gustave Eiffel's company designed and built the tower.", "Isambard Brunel designed the tower in 1925."),
        ("When was it completed?", "It was completed in 1889.", "It was completed in 1925."),
        ("How tall is it?", "It is 330 metres tall.", "It is 95 metres tall."),
        ("Where does it stand?", "It stands in Paris on the Champ de Mars.", "It stands in London next to the Thames."),
        ("Why was it built?", "It was built for the 1889 World's Fair.", "It was built as a radio mast for the navy in 1950."),
    ]
    with labelled.open("w") as f:
        for q, right, wrong in facts:
            f.write(json.dumps({"query": q, "context": CONTEXT, "answer": right, "label": 1}) + "\n")
            f.write(json.dumps({"query": q, "context": CONTEXT, "answer": wrong, "label": 0}) + "\n")
    driver.get(site.url + "/calibration")
    driver.find_element(By.ID, "file").send_keys(str(labelled))
    Select(driver.find_element(By.ID, "metric")).select_by_value("faithfulness")
    driver.find_element(By.ID, "workspace").clear()
    driver.find_element(By.ID, "workspace").send_keys("alpha")
    submit(driver, "calibrate")
    wait_for(driver, "#job[data-status=done], #job[data-status=failed]", timeout=240)
    assert driver.find_elements(By.CSS_SELECTOR, "#job[data-status=done]"), text(driver, "#job")
    # the same numbers as the calibrate command's code on the same file
    expected = calibrate_file(labelled, cfg=site.sc.cfg, metric="faithfulness", encoder=site.sc.app.encoder)
    assert text(driver, "#auc").startswith(f"{expected.auc:.3f}")
    assert text(driver, "#threshold") == f"{expected.recommended_threshold:.3f}"
    manifest = json.loads(text(driver, "#manifest"))
    assert manifest["workspace_id"] == "alpha"
    assert manifest["thresholds"]["faithfulness"]["min_score"] == pytest.approx(expected.recommended_threshold, abs=1e-6)
    roc = driver.find_element(By.ID, "roc")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", roc) > 100
    job_url = driver.current_url
    got = httpx.get(job_url + "/manifest.json", timeout=30)
    assert got.status_code == 200 and got.json() == manifest
    assert not list(Path(site.sc.cfg.dashboard.state_dir).rglob("labelled.jsonl"))  # the uploaded rows are gone
    assert "labelled.jsonl" in text(driver, "h1")
    screenshot(driver, shots, "calibration")


def test_reports_page_generates_the_annex_iv_report_for_a_period(site: Site, driver: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    driver.get(site.url + "/reports")
    assert driver.find_element(By.ID, "since").get_attribute("value") == today  # the log's first day
    submit(driver, "generate")
    wait_for(driver, "#job[data-status=done], #job[data-status=failed]", timeout=240)
    assert text(driver, "#report-verdict").startswith("Evidence VERIFIED: 5 records")
    links = {a.get_attribute("data-format"): a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")}
    assert set(links) == {"md", "html", "pdf"}
    md = httpx.get(links["md"], timeout=30).text
    assert "Annex IV" in md and "| Decisions recorded (verified) | 5 |" in md and f"{today}T00:00:00Z to" in md
    assert httpx.get(links["pdf"], timeout=30).content.startswith(b"%PDF")
    assert "<html" in httpx.get(links["html"], timeout=30).text
    screenshot(driver, shots, "report")
    # a period with no decisions: still verified, nothing summarised
    driver.get(site.url + "/reports")
    for field, value in (("since", "01012020"), ("until", "01312020")):
        el = driver.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    driver.find_element(By.ID, "format_pdf").click()
    driver.find_element(By.ID, "format_html").click()
    submit(driver, "generate")
    wait_for(driver, "#job[data-status=done]", timeout=240)
    md = httpx.get(driver.find_element(By.CSS_SELECTOR, "#downloads a").get_attribute("href"), timeout=30).text
    assert "| Decisions recorded (verified) | 0 |" in md and "2020-01-01T00:00:00Z to 2020-02-01T00:00:00Z" in md


def test_bad_form_input_is_named(site: Site) -> None:
    r = httpx.post(site.url + "/reports", data={"since": "2026-13-01", "format_md": "1"}, timeout=30)
    assert r.status_code == 400 and "since: expected a date like" in r.text
    r = httpx.post(site.url + "/reports", data={"since": "2026-01-01"}, timeout=30)
    assert r.status_code == 400 and "format: choose at least one" in r.text
    r = httpx.post(site.url + "/calibration", data={"metric": "faithfulness"}, timeout=30)
    assert r.status_code == 400 and "file: upload a labelled JSONL file" in r.text
    r = httpx.post(site.url + "/evidence/verify", headers={"Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 403  # a cross-site form cannot start work
    r = httpx.get(site.url + "/", timeout=30)
    assert "script-src 'none'" in r.headers["content-security-policy"]
    assert "http://" not in r.text.split("<main>")[0].replace(site.url, "")  # nothing loads from elsewhere


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard-auth")
    tokens = tmp / "tokens.json"
    tokens.write_text(
        json.dumps(
            [
                {"name": "reader", "token_sha256": hash_token(READER), "workspaces": ["alpha"], "scopes": ["workspace:read"]},
                {"name": "admin", "token_sha256": hash_token(ADMIN), "workspaces": ["*"], "scopes": ["workspace:admin"]},
            ]
        )
    )
    address = f"127.0.0.1:{free_port()}"
    sc = start_sidecar(make_config(tmp, dashboard={"address": address}, auth={"tokens_file": tokens}), encoder=encoder)
    answers = {"a": evaluate(sc, "alpha", GOOD, ADMIN), "b": evaluate(sc, "beta", BAD, ADMIN)}
    s = Site(sc, f"http://{address}", answers)
    wait_until(lambda: s.status(headers={"Authorization": f"Bearer {ADMIN}"})["records"] == 2, "the index")
    yield s
    sc.stop()


def test_login_and_workspace_scope(guarded: Site, driver: Any) -> None:
    from selenium.webdriver.common.by import By

    url = guarded.url
    assert httpx.get(url + "/api/status", timeout=30).status_code == 401
    r = httpx.get(url + "/", timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    # in the browser: a wrong token is refused, the reader's token logs in and sees its workspace only
    driver.delete_all_cookies()
    driver.get(url + "/")
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "token").send_keys("not-a-token-at-all")
    submit(driver, "login")
    assert "token refused" in text(driver, "#error")
    driver.find_element(By.ID, "token").send_keys(READER)
    submit(driver, "login")
    wait_for(driver, "#stat-decisions")
    assert text(driver, "#stat-decisions") == "1"
    assert [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#workspace option")] == ["", "alpha"]
    cookie = driver.get_cookie("certus_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    driver.get(f"{url}/decisions/{guarded.answers['b'].evaluation_id}")  # another workspace's decision
    assert "No verified decision" in text(driver, "#message")
    driver.get(url + "/evidence")
    assert "workspace:admin" in text(driver, "#message")
    assert "verified records indexed" not in text(driver, "#footer")  # nothing about the whole log
    assert driver.find_element(By.TAG_NAME, "body").text.count("records") == 0
    driver.delete_all_cookies()
    # a bearer header works without the form; the admin sees both workspaces and the whole-log pages
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.get(url + "/evidence", headers=admin, timeout=30).status_code == 200
    assert httpx.get(url + "/api/status", headers={"Authorization": f"Bearer {READER}"}, timeout=30).json() == {
        "version": guarded.status(headers=admin)["version"], "broken": False}
    assert "verified records indexed" not in httpx.get(url + "/login", timeout=30).text  # nothing before logging in
    page = httpx.get(url + "/?workspace=beta", headers=admin, timeout=30).text
    assert 'id="stat-decisions">1<' in page


def test_installed_dashboard_command_on_an_existing_log(site: Site, tmp_path: Path) -> None:
    """`certus-sidecar dashboard` as a user runs it: installed script, outside the checkout, its own
    state under an empty CERTUS_HOME; it serves the same verified records."""
    port = free_port()
    log_dir = tmp_path / "evidence"  # an auditor's copy of the log
    shutil.copytree(site.sc.cfg.evidence.log_dir, log_dir, ignore=shutil.ignore_patterns(".lock"))
    key = next((log_dir / "keys").glob("*.pub"))
    env = cli_env({"CERTUS_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "home")})
    proc = subprocess.Popen(
        cli_argv("dashboard", "--evidence-dir", log_dir, "--key", key, "--address", f"127.0.0.1:{port}"),
        env=env, cwd=OUTSIDE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        while line and "dashboard on" not in line:
            line = proc.stdout.readline() if proc.stdout else ""
        assert f"dashboard on http://127.0.0.1:{port}/" in line
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/api/status", timeout=10).json()["records"] == 5, "the standalone index", timeout_s=60)
        st = httpx.get(url + "/api/status", timeout=10).json()
        assert st["key_source"] == "given" and st["broken"] == ""
        assert (tmp_path / "home" / "dashboard").is_dir()  # its index lives in its own state dir
        page = httpx.get(f"{url}/decisions/{site.answers['bad'].evaluation_id}", timeout=30).text
        assert "verified now" in page and "not part of the signed record" in page  # no claims outside the sidecar
        assert "sc-standalone" in httpx.get(url + "/evidence", timeout=30).text
        # someone turns the failed verdict into a pass in the copy: the drill-down's signature check
        # and a verify run from the page both say so
        bad = site.answers["bad"]
        seg = next(log_dir.glob("segment-*.jsonl"))
        lines = seg.read_bytes().split(b"\n")
        i = next(n for n, line in enumerate(lines) if line and json.loads(Envelope.from_json(line).payload)["decision_id"] == bad.evaluation_id)
        env = Envelope.from_json(lines[i])
        payload = json.loads(env.payload)
        payload["outcome"] = "pass"
        lines[i] = dataclasses.replace(env, payload=canonical_json(payload)).to_json()
        seg.write_bytes(b"\n".join(lines))
        page = httpx.get(f"{url}/decisions/{bad.evaluation_id}", timeout=30).text
        assert "NOT verified" in page and "verified now" not in page
        assert httpx.post(url + "/evidence/verify", timeout=30).status_code == 303
        wait_until(lambda: "verify-verdict" in httpx.get(url + "/evidence", timeout=30).text, "the verify run", timeout_s=60)
        verdict = httpx.get(url + "/evidence", timeout=30).text
        assert "FAILED: " in verdict and f"line {i + 1} (seq {i})" in verdict
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_dashboard_refuses_a_remote_address_without_auth_and_tls(tmp_path: Path) -> None:
    proc = subprocess.run(
        cli_argv("dashboard", "--evidence-dir", tmp_path, "--address", "0.0.0.0:0"),
        env=cli_env({"CERTUS_HOME": str(tmp_path)}), cwd=OUTSIDE, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "dashboard.address" in proc.stderr and "TLS" in proc.stderr


def test_a_second_dashboard_on_the_same_index_is_refused(site: Site) -> None:
    """The sidecar's dashboard holds its index; the command on the same log and state directory
    would double every count, so it stops with a message instead."""
    proc = subprocess.run(
        cli_argv("dashboard", "--evidence-dir", site.sc.cfg.evidence.log_dir, "--address", f"127.0.0.1:{free_port()}"),
        env=cli_env({"CERTUS_DASHBOARD_DIR": str(site.sc.cfg.dashboard.state_dir)}), cwd=OUTSIDE,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "in use by another dashboard" in proc.stderr
