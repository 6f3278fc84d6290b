"""A real browser (headless chromium, driven through chromedriver's W3C WebDriver HTTP API)
opens many EventSources at once through running kestra-edge gateways and counts the live ones.

    python3 scripts/browser_check.py --webdriver http://127.0.0.1:PORT \
        --case NAME BASE STREAMS PROTOCOL [--case ...] [--broken NAME REASON] \
        [--user-data-dir DIR] [--screenshot PATH]

BASE is the gateway's context path, e.g. https://localhost:18443/kestra. For each case the
browser loads BASE/ping, opens --sources EventSources on BASE/api/v1/main/executions/demo-<i>/
follow?events=0 (never-ending streams), waits --wait-ms, and reports how many streams got at
least one event and the page's nextHopProtocol. A case passes when exactly STREAMS streams got
events over PROTOCOL: over HTTP/2 all of them, over HTTP/1.1 only the browser's 6 connections
per origin. A --broken case (its gateway did not start) fails with REASON. Prints one line per
case, then `N passed, M failed`; exits 0 only when every case passed. Standard library only.
"""
import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request

CHROMIUM = "/usr/bin/chromium"
HTTP_TIMEOUT = 30  # seconds, for each WebDriver request

# Opens the EventSources, lets them run, closes them and reports. Kestra's (and the
# stand-in's) events are named (`event: execution`), so `onmessage` alone would never fire.
OPEN_STREAMS = """
const [base, count, waitMs] = arguments;
const done = arguments[arguments.length - 1];
const received = new Array(count).fill(0);
const errors = new Array(count).fill(0);
const firstEventMs = new Array(count).fill(null);
const urls = [];
const sources = [];
const start = performance.now();
for (let i = 0; i < count; i++) {
  const url = base + '/api/v1/main/executions/demo-' + i + '/follow?events=0&interval_ms=200';
  urls.push(new URL(url, location.href).href);
  const source = new EventSource(url);
  const onEvent = () => {
    if (received[i]++ === 0) firstEventMs[i] = Math.round(performance.now() - start);
  };
  source.onmessage = onEvent;
  source.addEventListener('execution', onEvent);
  source.onerror = () => { errors[i]++; };
  sources.push(source);
}
setTimeout(() => {
  for (const source of sources) source.close();
  // Resource Timing entries appear only once a fetch ends; closing the sources ends them.
  setTimeout(() => {
    const resources = performance.getEntriesByType('resource')
      .filter((e) => urls.includes(e.name))
      .map((e) => e.nextHopProtocol);
    const nav = performance.getEntriesByType('navigation')[0];
    done({
      streams: received.filter((n) => n > 0).length,
      received, errors, firstEventMs,
      navigation: nav ? nav.nextHopProtocol : null,
      resources,
    });
  }, 300);
}, waitMs);
"""


class WebDriverError(Exception):
    pass


class WebDriver:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.session = None

    def call(self, method, path, body=None, timeout=HTTP_TIMEOUT):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = json.load(resp)
        except urllib.error.HTTPError as err:
            try:
                value = json.load(err).get("value", {})
                detail = f"{value.get('error')}: {value.get('message', '')[:300]}"
            except Exception:  # noqa: BLE001 - any unreadable error body
                detail = str(err)
            raise WebDriverError(f"{method} {path}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise WebDriverError(f"{method} {path}: {err}") from None
        return payload.get("value")

    def start(self, user_data_dir):
        args = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
            "--disable-dev-shm-usage", "--window-size=900,500",
            f"--user-data-dir={user_data_dir}",
        ]
        caps = {
            "browserName": "chrome",
            "acceptInsecureCerts": True,
            "timeouts": {"script": 30000, "pageLoad": 20000, "implicit": 0},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }
        # chromedriver may still be binding its port: retry the first request for a while.
        deadline = time.monotonic() + 20
        while True:
            try:
                value = self.call("POST", "/session",
                                  {"capabilities": {"alwaysMatch": caps}}, timeout=60)
                break
            except WebDriverError as err:
                if "Connection refused" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.session = value["sessionId"]
        return value.get("capabilities", {}).get("browserVersion", "?")

    def s(self, path):
        return f"/session/{self.session}{path}"

    def navigate(self, url):
        self.call("POST", self.s("/url"), {"url": url})

    def execute(self, script, *args):
        return self.call("POST", self.s("/execute/sync"), {"script": script, "args": list(args)})

    def execute_async(self, script, *args):
        return self.call("POST", self.s("/execute/async"),
                         {"script": script, "args": list(args)})

    def screenshot(self, path):
        png = base64.b64decode(self.call("GET", self.s("/screenshot")))
        with open(path, "wb") as f:
            f.write(png)

    def quit(self):
        if self.session:
            try:
                self.call("DELETE", self.s(""), timeout=15)
            except WebDriverError as err:
                print(f"warning: closing the browser: {err}", file=sys.stderr)
            self.session = None


def run_case(driver, name, base, want_streams, want_protocol, sources, wait_ms):
    driver.navigate(base + "/ping")
    page = driver.execute("return document.body ? document.body.innerText.trim() : ''")
    if page != "pong":
        return False, f"{base}/ping showed {page[:80]!r}, not 'pong'"
    result = driver.execute_async(OPEN_STREAMS, base, sources, wait_ms)
    # A stream that never got a connection (stalled behind the per-origin limit) has an
    # empty nextHopProtocol.
    connected = [p for p in result["resources"] if p]
    protocols = sorted(set([result["navigation"] or "?"] + connected))
    ok = result["streams"] == want_streams and protocols == [want_protocol]
    first = [t for t in result["firstEventMs"] if t is not None]
    detail = (f"{result['streams']}/{sources} streams got events (expected {want_streams}), "
              f"protocol {','.join(protocols)} (expected {want_protocol}; page and "
              f"{len(connected)} streams, {len(result['resources']) - len(connected)} never "
              f"connected), first event after "
              f"{min(first) if first else '-'}..{max(first) if first else '-'} ms")
    if not ok:
        detail += f"; events per stream {result['received']}, errors {result['errors']}"
    return ok, detail


def save_screenshot(driver, path, lines, passed, failed):
    summary = "\n".join(["kestra-edge browser check", ""] + lines
                        + ["", f"{passed} passed, {failed} failed"])
    try:
        driver.execute("document.body.innerHTML = '';"
                       "document.body.style.cssText = 'font: 15px monospace;"
                       " white-space: pre-wrap; margin: 16px';"
                       "document.body.innerText = arguments[0];", summary)
        driver.screenshot(path)
        print(f"screenshot: {path}", flush=True)
    except (WebDriverError, OSError) as err:
        print(f"warning: no screenshot: {err}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webdriver", required=True, help="chromedriver's URL")
    parser.add_argument("--case", nargs=4, action="append", default=[],
                        metavar=("NAME", "BASE", "STREAMS", "PROTOCOL"))
    parser.add_argument("--broken", nargs=2, action="append", default=[],
                        metavar=("NAME", "REASON"), help="a case that fails without a browser")
    parser.add_argument("--sources", type=int, default=12, help="EventSources per case")
    parser.add_argument("--wait-ms", type=int, default=5000)
    parser.add_argument("--user-data-dir", default="/tmp/browser-check-profile")
    parser.add_argument("--screenshot", help="write a PNG of the results here")
    opts = parser.parse_args()

    passed, failed, lines = 0, 0, []

    def report(ok, name, detail):
        nonlocal passed, failed
        line = f"{'ok  ' if ok else 'FAIL'} {name}: {detail}"
        print(line, flush=True)
        lines.append(line)
        if ok:
            passed += 1
        else:
            failed += 1

    for name, reason in opts.broken:
        report(False, name, reason)

    driver = WebDriver(opts.webdriver)
    try:
        if opts.case:
            version = driver.start(opts.user_data_dir)
            print(f"browser: chromium {version} (headless)", flush=True)
        for name, base, streams, protocol in opts.case:
            try:
                ok, detail = run_case(driver, name, base, int(streams), protocol,
                                      opts.sources, opts.wait_ms)
            except (WebDriverError, KeyError, TypeError) as err:
                ok, detail = False, f"{type(err).__name__}: {err}"
            report(ok, name, detail)
        if opts.screenshot and driver.session:
            save_screenshot(driver, opts.screenshot, lines, passed, failed)
    except WebDriverError as err:
        # The browser did not start (or died): every case not yet reported fails.
        for name, *_ in opts.case[passed + failed - len(opts.broken):]:
            report(False, name, f"no browser: {err}")
    finally:
        driver.quit()

    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
