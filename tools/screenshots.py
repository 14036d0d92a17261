"""Screenshots of a run as a user sees it: TensorBoard's UI in headless Chromium, and the HTML report.

Serves the run with TensorBoard on localhost, opens it in Chromium (from the system packages:
``apt-get install chromium``), and saves PNGs of

- the Time Series tab filtered to the overlays (``tensorboard_overlays.png``), at TensorBoard's default card size;
- the Custom Scalars tab: the monitor's dashboard (``tensorboard_dashboard.png``), with the settings the README
  recommends for drift (smoothing 0, "ignore outliers in chart scaling" off: a one-epoch alarm is an outlier);
- the report, ``xai_report.html`` (``report.png``), if the run has one.

    python tools/screenshots.py runs/demo/version_0 --out docs

Nothing leaves the machine: TensorBoard binds to 127.0.0.1 and Chromium runs without network services. The dashboard
is opened through a small same-origin proxy that first stores TensorBoard's "ignore outliers" setting (kept in the
browser's localStorage, which a fresh headless profile cannot be given otherwise).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


#: The page the proxy serves before TensorBoard's own: store the setting, then open the dashboard.
_SETUP_PAGE = (b"<!DOCTYPE html><script>localStorage.setItem('_ignoreYOutliers', 'false');"
               b"location.replace('/#custom_scalars&_smoothingWeight=0');</script>")
SETUP_PATH = "/lightning_xai_dashboard_setup"


def _proxy(target: str) -> tuple[ThreadingHTTPServer, int]:
    """A local HTTP proxy to ``target`` (TensorBoard) that also serves :data:`SETUP_PATH`; returns it and its port."""

    class Handler(BaseHTTPRequestHandler):
        def _forward(self, body: bytes | None = None) -> None:
            if self.path == SETUP_PATH:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(_SETUP_PAGE)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            request = urllib.request.Request(target + self.path, data=body, headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, reply_headers, payload = response.status, response.getheaders(), response.read()
            except urllib.error.HTTPError as err:
                status, reply_headers, payload = err.code, err.headers.items(), err.read()
            self.send_response(status)
            for key, value in reply_headers:
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self._forward()

        def do_POST(self) -> None:  # noqa: N802
            self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("Chromium not found: install it with `apt-get install -y chromium` (Debian/Ubuntu).")


def _detail(path: Path) -> int:
    """How much is drawn: distinct colours in the screenshot (a card still loading is blank)."""
    from PIL import Image

    with Image.open(path) as img:
        return len(img.convert("RGB").getcolors(maxcolors=1 << 20) or ())


def screenshot(url: str, out: Path, *, width: int, height: int, wait_ms: int = 25000, tries: int = 3) -> Path:
    """Load ``url`` in headless Chromium (a fresh profile) and save a ``width x height`` screenshot to ``out``.

    TensorBoard fetches images after the page has loaded; on a busy machine a card may still be blank, so the page
    is shot up to ``tries`` times with longer waits and the most detailed shot is kept.
    """
    best = -1
    for attempt in range(tries):
        shot = out.with_name(f".{out.stem}.try{attempt}.png")
        with tempfile.TemporaryDirectory() as profile:
            cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   f"--virtual-time-budget={wait_ms * (attempt + 1)}", f"--screenshot={shot}", url]
            subprocess.run(cmd, check=True, capture_output=True, timeout=180)
        detail = _detail(shot)
        if detail > best:
            best = detail
            shot.replace(out)
        else:
            shot.unlink()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run's log directory (with TensorBoard event files)")
    parser.add_argument("--out", default="docs", help="where to write the PNGs")
    parser.add_argument("--method", default="grad_cam", help="whose overlays to show")
    parser.add_argument("--width", type=int, default=1280, help="browser window width")
    args = parser.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run), "--host", "127.0.0.1",
                               "--port", str(port), "--samples_per_plugin", "images=1000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):  # TensorBoard takes a few seconds to start and to read the event files
            try:
                urllib.request.urlopen(f"{base}/data/runs", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)
        proxy, proxy_port = _proxy(base)
        try:
            shots = [
                screenshot(f"{base}/?tagFilter=xai/{args.method}/(overlay|timeline)#timeseries",
                           out / "tensorboard_overlays.png", width=args.width, height=900),
                screenshot(f"http://127.0.0.1:{proxy_port}{SETUP_PATH}", out / "tensorboard_dashboard.png",
                           width=args.width, height=1000),
            ]
        finally:
            proxy.shutdown()
        report = run / "xai_report.html"
        if report.is_file():
            shots.append(screenshot(report.resolve().as_uri(), out / "report.png", width=1100, height=1500,
                                    wait_ms=2000, tries=1))
    finally:
        server.terminate()
        server.wait(timeout=30)
    for shot in shots:
        print(f"wrote {shot}")


if __name__ == "__main__":
    main()
