"""How fast ``lucidic-otel ui`` answers as the store grows: time to first byte of every page and
API call, and the time to a rendered page in a real headless Chromium.

Stores are written by the real ``Store.write_batch`` (three spans per session, one of them an
LLM call with its event) and ``record_session_init`` (names), like an exporter writes them:
100, 10,000 and 100,000 sessions, and one more session of 5,000 spans (a root, 50 steps of 99
children, every tenth an LLM call). The viewer runs as the real console script in its own
process, so its timings are not mixed with this client's; each URL is requested ``--rounds``
times over a fresh connection and the median and worst are printed.

    python bench/ui.py            # 100 / 10,000 / 100,000 sessions, a 5,000-span session
    python bench/ui.py --quick    # 100 / 1,000 sessions and a 500-span session, for CI

Target: every page and API answer < 300 ms server-side (TTFB) on a 2-core machine. The
rendered times need chromium and chromedriver (skipped with a note otherwise). Exit status is
non-zero only when an answer is wrong (not 200, or the wrong count), never for a timing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from _machine import machine_lines

from lucidic_otel.outbox.store import SpanRecord, Store

CLI = Path(sys.executable).parent / "lucidic-otel"
BIG_SESSION = "bench-big-session"
TARGET_MS = 300.0
_URL = re.compile(r"at (http://127\.0\.0\.1:(\d+)/)")


def _span(session: str, trace: str, span: str, parent: Optional[str], name: str, start: int,
          service: str, llm: bool) -> SpanRecord:
    attributes: Dict[str, Any] = {"lucidic.session_id": session}
    if llm:
        attributes.update({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                           "gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 8})
    return SpanRecord(
        trace_id=trace, span_id=span, parent_span_id=parent, session_id=session, name=name,
        kind="CLIENT" if llm else "INTERNAL", service=service, pid=4242, start_ns=start,
        end_ns=start + 2_000_000, attributes=attributes,
        resource={"service.name": service}, event_id=f"ev-{span}" if llm else None,
        event_type="llm_generation" if llm else None, model="gpt-4o-mini" if llm else None,
        input_tokens=20 if llm else None, output_tokens=8 if llm else None,
        cost=0.00001 if llm else None,
    )


def _event(session: str, span: SpanRecord) -> Dict[str, Any]:
    return {"client_event_id": span.event_id, "session_id": session, "type": "llm_generation",
            "payload": {"request": {"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": "What is the weather in Paris?"}]},
                "response": {"output": "Sunny."},
                "usage": {"input_tokens": 20, "output_tokens": 8, "cost": 0.00001}}}


def build_store(path: Path, sessions: int, big_spans: int) -> None:
    """``sessions`` small sessions (three spans each, two services) and one big session."""
    base = 1_700_000_000_000_000_000
    with Store(path, max_bytes=64 * 1024**3) as store:
        batch: List[SpanRecord] = []
        events: List[Dict[str, Any]] = []
        for index in range(sessions):
            sid = f"bench-{index:07d}"
            store.record_session_init(sid, {"session_id": sid, "session_name": f"run {index}"})
            trace = f"{index:032x}"
            start = base + index * 1_000_000_000
            root = f"{index * 4 + 1:016x}"
            batch.append(_span(sid, trace, root, None, "POST /chat", start, "bench-gateway",
                               False))
            batch.append(_span(sid, trace, f"{index * 4 + 2:016x}", root, "agent", start + 1000,
                               "bench-agent", False))
            llm = _span(sid, trace, f"{index * 4 + 3:016x}", root, "chat gpt-4o-mini",
                        start + 2000, "bench-agent", True)
            batch.append(llm)
            events.append(_event(sid, llm))
            if len(batch) >= 3000:
                store.write_batch(batch, events)
                batch, events = [], []
        store.record_session_init(BIG_SESSION, {"session_id": BIG_SESSION,
                                                "session_name": "big session"})
        trace = "f" * 32
        start = base + (sessions + 10) * 1_000_000_000
        root = "e" * 16
        batch.append(_span(BIG_SESSION, trace, root, None, "POST /run", start, "bench-gateway",
                           False))
        for index in range(1, big_spans):
            step = index // 100
            parent = root if index % 100 == 0 else f"{step * 100:016x}"
            if index % 100 == 0:
                span = _span(BIG_SESSION, trace, f"{index:016x}", root, f"step {step}",
                             start + index * 10_000, "bench-agent", False)
            else:
                span = _span(BIG_SESSION, trace, f"{index:016x}", parent, f"call {index}",
                             start + index * 10_000, "bench-agent", index % 10 == 3)
                if span.event_id:
                    events.append(_event(BIG_SESSION, span))
            batch.append(span)
        store.write_batch(batch, events)


class Viewer:
    """The real console script, serving one store."""

    def __init__(self, store: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUCIDIC_"))}
        env.pop("DISPLAY", None)
        self.process = subprocess.Popen(
            [str(CLI), "ui", "--no-browser", "--port", "0", "--store", str(store)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.process.stdout is not None
        for _ in range(50):  # the first lines it prints; the URL is the first
            line = self.process.stdout.readline()
            match = _URL.search(line)
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                return
            if not line:
                break
        self.stop()
        raise SystemExit(f"the viewer did not start: {line!r}")

    def get(self, path: str) -> Tuple[float, float, int, bytes]:
        """(ms to the first byte, ms to the whole answer, status, body) on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()  # returns once the status line and headers arrived
            first = time.perf_counter()
            body = response.read()
            done = time.perf_counter()
            return (first - started) * 1000, (done - started) * 1000, response.status, body
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def measure(viewer: Viewer, path: str, rounds: int) -> Tuple[float, float, float, Any]:
    """Median TTFB, worst TTFB, median total (ms), and the decoded answer of the last round."""
    viewer.get(path)  # warm: the first read of a page also warms SQLite's page cache
    firsts, totals = [], []
    body = b""
    for _ in range(rounds):
        first, total, status, body = viewer.get(path)
        if status != 200:
            raise SystemExit(f"GET {path}: status {status}: {body[:200]!r}")
        firsts.append(first)
        totals.append(total)
    answer = json.loads(body) if path.startswith("/api/") else None
    return statistics.median(firsts), max(firsts), statistics.median(totals), answer


def rendered_ms(driver: Any, url: str, selector: str) -> Optional[float]:
    """Milliseconds from navigation start to the page's own "rendered" mark, in Chromium."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(url)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready-ms"))
    assert driver.find_elements(By.CSS_SELECTOR, selector), selector
    return float(driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready-ms"))


def chrome() -> Optional[Any]:
    driver_path, browser = shutil.which("chromedriver"), shutil.which("chromium")
    if not driver_path or not browser:
        print("rendered times skipped: install chromium and chromium-driver to measure them")
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("rendered times skipped: pip install selenium to measure them")
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1440,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small stores, for CI")
    parser.add_argument("--rounds", type=int, default=None, help="requests per URL")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated session counts (default 100,10000,100000)")
    parser.add_argument("--no-browser", action="store_true", help="skip the rendered times")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [100, 10_000, 100_000]
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    big = 500 if args.quick else 5000
    rounds = args.rounds or (5 if args.quick else 20)
    for line in machine_lines("selenium"):
        print(line)
    print("load average at start: {:.1f} {:.1f} {:.1f} (other work on the machine inflates "
          "every figure)".format(*os.getloadavg()))
    print(f"{rounds} requests per URL over a new connection each, after one warm-up; ms\n")
    driver = None if args.no_browser else chrome()
    workdir = Path(tempfile.mkdtemp(prefix="lucidic-ui-bench-"))
    worst = 0.0
    header = (f"{'sessions':>9} {'URL':<44} {'TTFB med':>9} {'TTFB max':>9} {'total med':>10}"
              f" {'rendered':>9}")
    print(header)
    try:
        for size in sizes:
            store = workdir / f"store-{size}.db"
            built = time.perf_counter()
            build_store(store, size, big)
            build_s = time.perf_counter() - built
            viewer = Viewer(store)
            try:
                total = size + 1
                pages = -(-total // 50)
                urls = [
                    ("/", None, None),
                    ("/api/sessions", "#sessions tbody tr", "/"),
                    (f"/api/sessions?page={pages}", None, None),
                    ("/api/sessions?q=run+4", None, None),
                    ("/api/sessions?q=no-such-text", None, None),
                    (f"/sessions/{BIG_SESSION}", None, None),
                    (f"/api/sessions/{BIG_SESSION}", "#waterfall .row", f"/sessions/{BIG_SESSION}"),
                    (f"/api/sessions/{BIG_SESSION}/spans/{'f' * 32}/{3:016x}", None, None),
                ]
                for path, selector, page in urls:
                    median, slowest, whole, answer = measure(viewer, path, rounds)
                    worst = max(worst, median)
                    if path == "/api/sessions" and answer["total"] != total:
                        raise SystemExit(f"expected {total} sessions, the API says "
                                         f"{answer['total']}")
                    if path == f"/api/sessions/{BIG_SESSION}" and len(
                            answer["waterfall"]["rows"]) != big:
                        raise SystemExit(f"expected {big} rows, got "
                                         f"{len(answer['waterfall']['rows'])}")
                    shown = "-"
                    if driver is not None and selector:
                        ms = rendered_ms(driver, viewer.url.rstrip("/") + page, selector)
                        shown = f"{ms:.0f}" if ms is not None else "-"
                    print(f"{size:>9,} {path[:44]:<44} {median:>9.1f} {slowest:>9.1f} "
                          f"{whole:>10.1f} {shown:>9}")
            finally:
                viewer.stop()
            size_mb = store.stat().st_size / 1e6
            print(f"{'':>9} (store: {size:,} sessions + one of {big:,} spans, {size_mb:.0f} MB,"
                  f" written in {build_s:.1f}s)")
            store.unlink()
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nworst median TTFB: {worst:.1f} ms (target < {TARGET_MS:.0f} ms server-side)")
    print("rendered: ms from navigation start to the page's data-ready-ms mark (headless "
          "Chromium; sessions page: first page of rows; session page: waterfall and the "
          "first span's detail)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
