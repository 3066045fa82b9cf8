#!/usr/bin/env python3
"""The guest test matrix: boots the hyperbatch kernel under QEMU once per
configuration and checks what it reports on serial.

Every boot goes through scripts/run-qemu.sh (the main job's own command), with
--no-build and a timeout, two at a time by default (the machines have 2 cores).
The kernel's machine-readable serial lines are `HB ` plus one JSON object with
an "event" key; this file checks them:

- expect PASS: one `boot` event whose cpus_listed and cpus_online both equal
  the --smp given, every `test` event ok, at least `min_tests` of them, an
  `exit` event with status 0, and run-qemu.sh exiting 0 too.
- expect FAULT: the guest prints a fault report (prose matching `must_print`
  and an HB `fault` event), an `exit` event with a non-zero status, and
  run-qemu.sh passes that status on. A timeout, a triple fault (QEMU stops under -no-reboot with no exit
  line) or a QEMU error is not the expected failure.

Any line starting with `HB ` that is not a JSON object with "event" fails the
configuration. Serial logs land in target/guest/. The last line printed is
`N passed, N failed` (with `, N skipped` when rows were skipped).

    tests/guest.py [--quick] [--filter REGEX] [--jobs N] [--kernel PATH]
                   [--accel tcg|kvm|auto] [--list]

To add a configuration, add a row to MATRIX below.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_QEMU = ROOT / "scripts" / "run-qemu.sh"
BUILD = ROOT / "scripts" / "build.sh"

PASS = "pass"
FAULT = "fault"
# One named test must report ok:false (a fault-injection proof that the test
# can fail), every other test must pass, and the guest must exit with failure.
TEST_FAILS = "test-fails"

# What a fault report must contain. The exception handler names the vector.
FAULT_REPORT = r"(?i)(page fault|#PF|exception)"


@dataclasses.dataclass(frozen=True)
class Config:
    machine: str  # microvm | pc | q35
    smp: int
    cmdline: str  # the kernel command line
    expect: str = PASS  # PASS, FAULT or TEST_FAILS
    failing_test: str | None = None  # with TEST_FAILS: the test that must fail
    timeout: int = 60  # seconds, enforced by run-qemu.sh
    quick: bool = False  # part of --quick
    min_tests: int = 0  # at least this many `test` events
    must_print: str | None = None  # regex a non-HB serial line must match
    must_events: tuple[str, ...] = ()  # HB events that must appear
    mem: str = "512M"

    @property
    def name(self) -> str:
        return f"{self.machine}-smp{self.smp} {self.cmdline}"


# fmt: off
MATRIX: list[Config] = [
    #      machine    smp  cmdline                   options
    Config("microvm", 1,   "run=boot",               quick=True),
    Config("microvm", 2,   "run=boot",               quick=True),
    Config("microvm", 4,   "run=boot"),
    Config("pc",      1,   "run=boot"),
    Config("pc",      2,   "run=boot",               quick=True),
    Config("pc",      4,   "run=boot"),
    Config("q35",     1,   "run=boot"),
    Config("q35",     2,   "run=boot"),
    Config("q35",     4,   "run=boot",               quick=True),
    Config("q35",     8,   "run=boot",               timeout=120),
    # The in-guest tests (selftest.rs): each prints an HB test line. Both
    # backends, 1, 2 and 4 vCPUs (issue 3's done-when).
    Config("microvm", 1,   "run=test pv=batched",    min_tests=20),
    Config("microvm", 2,   "run=test pv=batched",    quick=True, min_tests=20),
    Config("q35",     4,   "run=test pv=batched",    quick=True, min_tests=20),
    Config("pc",      4,   "run=test pv=batched",    min_tests=20),
    Config("microvm", 1,   "run=test pv=immediate",  min_tests=20),
    Config("q35",     2,   "run=test pv=immediate",  min_tests=20),
    Config("microvm", 4,   "run=test pv=immediate",  quick=True, min_tests=20),
    # Without the shootdown, the cross-vCPU stale-TLB test must catch the
    # stale translation: proof that it can fail.
    Config("q35",     2,   "run=test test=mm_stale_tlb_cross_cpu no_shootdown",
           expect=TEST_FAILS, failing_test="mm_stale_tlb_cross_cpu", quick=True),
    # The exception path: must report and fail, not hang or triple-fault.
    Config("microvm", 2,   "run=test test=fault",    expect=FAULT, quick=True,
           must_print=FAULT_REPORT, must_events=("fault",)),
]
# fmt: on


@dataclasses.dataclass
class Result:
    config: Config
    ok: bool
    seconds: float
    problems: list[str]
    serial: list[str]
    messages: list[str]  # run-qemu.sh's own stderr
    log: Path


def hb_events(serial: list[str], problems: list[str]) -> list[dict]:
    """Parses the `HB ` lines; a malformed one is a problem, not a crash."""
    events = []
    for line in serial:
        if not line.startswith("HB "):
            continue
        try:
            event = json.loads(line[3:])
        except json.JSONDecodeError as e:
            problems.append(f"HB line is not JSON ({e}): {line!r}")
            continue
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            problems.append(f"HB line is not an object with an \"event\": {line!r}")
            continue
        events.append(event)
    return events


def check(config: Config, rc: int, serial: list[str]) -> list[str]:
    """Everything wrong with one boot's outcome; empty means it passed."""
    problems: list[str] = []
    events = hb_events(serial, problems)
    boots = [e for e in events if e["event"] == "boot"]
    tests = [e for e in events if e["event"] == "test"]
    exits = [e for e in events if e["event"] == "exit"]

    if rc == 124:
        problems.append(f"timed out after {config.timeout} s")
    elif rc == 125:
        problems.append("the VM stopped without an HB exit line (triple fault?) "
                        "or its exit reports disagreed")
    elif rc == 126:
        problems.append("QEMU itself failed")

    status = exits[-1].get("status") if exits else None
    if not exits:
        problems.append("no HB exit line")
    elif len(exits) > 1:
        problems.append(f"{len(exits)} HB exit lines, expected one")
    if exits and not isinstance(status, int):
        problems.append(f"exit line has no integer status: {exits[-1]}")
        status = None

    for t in tests:
        must_fail = config.expect == TEST_FAILS and t.get("name") == config.failing_test
        if must_fail and t.get("ok") is not False:
            problems.append(f"test {t.get('name')!r} passed, but it must fail here: {t.get('detail')!r}")
        elif not must_fail and t.get("ok") is not True:
            problems.append(f"test {t.get('name')!r} failed: {t.get('detail')!r}")
    if config.expect == TEST_FAILS and not any(t.get("name") == config.failing_test for t in tests):
        problems.append(f"test {config.failing_test!r} did not run")
    if len(tests) < config.min_tests:
        problems.append(f"{len(tests)} test lines, expected at least {config.min_tests}")

    if config.expect == PASS:
        if len(boots) != 1:
            problems.append(f"{len(boots)} HB boot lines, expected one")
        for b in boots[:1]:
            listed, online = b.get("cpus_listed"), b.get("cpus_online")
            if listed != config.smp or online != config.smp:
                problems.append(f"boot line has cpus_listed={listed} cpus_online={online}, "
                                f"expected {config.smp} (--smp)")
        if status is not None and status != 0:
            problems.append(f"guest exit status {status}, expected 0")
        if rc != 0 and rc not in (124, 125, 126):
            problems.append(f"run-qemu.sh exited {rc}, expected 0")
    elif config.expect in (FAULT, TEST_FAILS):
        if status == 0:
            problems.append("guest exit status 0, expected a failure")
        if rc == 0:
            problems.append("run-qemu.sh exited 0, expected the guest's failure status")
        elif status not in (None, 0) and rc not in (124, 125, 126):
            want = status if 0 < status < 124 else 1
            if rc != want:
                problems.append(f"run-qemu.sh exited {rc}, the guest reported status {status}")
    else:
        problems.append(f"unknown expectation {config.expect!r}")

    for name in config.must_events:
        if not any(e["event"] == name for e in events):
            problems.append(f"no HB {name!r} event")
    if config.must_print:
        pattern = re.compile(config.must_print)
        if not any(pattern.search(l) for l in serial if not l.startswith("HB ")):
            problems.append(f"serial has no line matching {config.must_print!r}")
    return problems


class Runner:
    """Runs boots, and on Ctrl-C stops every QEMU it started."""

    def __init__(self, kernel: Path, accel: str, logdir: Path):
        self.kernel = kernel
        self.accel = accel
        self.logdir = logdir
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()

    def run(self, config: Config) -> Result:
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", config.name)
        log = self.logdir / f"{slug}.log"
        cmd = [str(RUN_QEMU), "--no-build", "--kernel", str(self.kernel),
               "--machine", config.machine, "--smp", str(config.smp),
               "--mem", config.mem, "--accel", self.accel,
               "--timeout", str(config.timeout), "--log", str(log),
               "--", *config.cmdline.split()]
        start = time.monotonic()
        # A session of its own, so that a stuck run-qemu.sh and its QEMU can
        # be killed together.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        with self.lock:
            self.running.add(proc)
        try:
            # run-qemu.sh enforces the timeout itself; this is the backstop.
            out, err = proc.communicate(timeout=config.timeout + 30)
            rc = proc.returncode
            extra = []
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            rc = 124
            extra = [f"run-qemu.sh did not stop within {config.timeout + 30} s; killed it"]
        finally:
            with self.lock:
                self.running.discard(proc)
        seconds = time.monotonic() - start
        serial = out.decode("utf-8", "replace").replace("\r", "").splitlines()
        messages = err.decode("utf-8", "replace").splitlines()
        problems = extra + check(config, rc, serial)
        return Result(config, not problems, seconds, problems, serial, messages, log)

    def stop_all(self) -> None:
        with self.lock:
            for proc in self.running:
                kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def report_failure(r: Result) -> None:
    print(f"---- FAIL {r.config.name} ----")
    for p in r.problems:
        print(f"  - {p}")
    interesting = [m for m in r.messages if "FAILED" in m or "TIMEOUT" in m
                   or m.startswith("qemu-system")]
    for m in interesting[-5:]:
        print(f"  {m}")
    print(f"  serial (last 40 lines; whole log {r.log.relative_to(ROOT) if r.log.is_relative_to(ROOT) else r.log}):")
    for line in r.serial[-40:] or ["(nothing)"]:
        print(f"    | {line}")


def build_kernel() -> Path:
    out = subprocess.run([str(BUILD)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        sys.exit("guest.py: scripts/build.sh failed (see above)")
    return Path(out.stdout.decode().strip().splitlines()[-1])


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and a CI runner's SIGTERM both stop the QEMUs we started (they run
    # in sessions of their own, so no terminal signal reaches them).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the rows marked quick")
    ap.add_argument("--filter", metavar="REGEX", help="only configurations whose name matches")
    ap.add_argument("--jobs", type=int, default=2, help="boots at once (default 2)")
    ap.add_argument("--kernel", type=Path, help="the ELF to boot (default: scripts/build.sh)")
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"],
                    help="passed to run-qemu.sh (default tcg: the same result everywhere)")
    ap.add_argument("--list", action="store_true", help="print the selected configurations")
    args = ap.parse_args()

    selected = [c for c in MATRIX if (not args.quick or c.quick)
                and (not args.filter or re.search(args.filter, c.name))]
    if args.list:
        for c in selected:
            print(f"{c.name}  (expect {c.expect}, timeout {c.timeout} s)")
        return 0
    if not selected:
        print("guest.py: no configuration matches", file=sys.stderr)
        print("0 passed, 0 failed")
        return 1
    if args.jobs < 1:
        sys.exit("guest.py: --jobs must be at least 1")

    kernel = args.kernel.resolve() if args.kernel else build_kernel()
    if not kernel.is_file():
        sys.exit(f"guest.py: no kernel at {kernel}")
    logdir = ROOT / "target" / "guest"
    logdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(kernel, args.accel, logdir)
    print(f"guest.py: {len(selected)} configurations, {args.jobs} at a time, "
          f"accel {args.accel}, kernel {kernel}", flush=True)

    results: list[Result] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(runner.run, c) for c in selected]
        for f in concurrent.futures.as_completed(futures):
            r = f.result()
            results.append(r)
            verdict = "ok" if r.ok else "FAIL"
            print(f"{verdict:4} {r.config.name} ({r.seconds:.1f} s)", flush=True)
    except KeyboardInterrupt:
        runner.stop_all()
        pool.shutdown(wait=False, cancel_futures=True)
        print("guest.py: interrupted", file=sys.stderr)
        return 130
    pool.shutdown()

    order = {c: i for i, c in enumerate(selected)}
    results.sort(key=lambda r: order[r.config])
    failed = [r for r in results if not r.ok]
    for r in failed:
        report_failure(r)

    width = max(len(r.config.name) for r in results)
    print()
    print(f"{'configuration':<{width}}  {'expect':6}  {'result':6}  seconds")
    for r in results:
        print(f"{r.config.name:<{width}}  {r.config.expect:6}  "
              f"{'ok' if r.ok else 'FAIL':6}  {r.seconds:7.1f}")
    print()
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
