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
- expect FAILS: a deliberate failure that is not a fault (a corrupt boot
  structure, a bad command line, a watchdog, a stress mismatch): the guest
  prints the clear message `must_print` and exits with a failure status, as
  for FAULT.
- expect TEST_FAILS: one named test fails, every other passes, and the guest
  exits with a failure status.

`cpus_listed`/`cpus_online` replace --smp in the PASS check of the boot line
when a row removes CPUs on purpose (skip_cpu, no ACPI). Every `stress_summary`
event of a PASS row must show 0 mismatches, every expected fault seen, no
leaked frame, and at least the `ops=` asked for. The summary table gives, for
each configuration, how many of its in-guest tests passed, failed and were
skipped (a test that reports "skipped: ..." needs more vCPUs, say).

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
# A deliberate failure with a clear message (`must_print`) and a failure exit.
FAILS = "fails"

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
    cpus_listed: int | None = None  # expected in the boot line (default: smp)
    cpus_online: int | None = None  # expected in the boot line (default: smp)

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
    # The in-guest tests (src/selftest/): each prints an HB test
    # line. Every machine at 1, 2 and 4 vCPUs under both backends (issues 3
    # and 5); --quick keeps three of them.
    *[Config(m, n, f"run=test pv={pv}", min_tests=33,
             quick=(m, n, pv) in {("microvm", 2, "batched"), ("q35", 4, "batched"),
                                  ("microvm", 4, "immediate")})
      for m in ("microvm", "pc", "q35") for n in (1, 2, 4) for pv in ("batched", "immediate")],
    # Without the shootdown, the cross-vCPU stale-TLB test must catch the
    # stale translation: proof that it can fail.
    Config("q35",     2,   "run=test test=mm_stale_tlb_cross_cpu no_shootdown",
           expect=TEST_FAILS, failing_test="mm_stale_tlb_cross_cpu", quick=True),
    # The same proof for a 2 MiB page.
    Config("microvm", 2,   "run=test test=mm_large_stale_tlb_cross_cpu no_shootdown",
           expect=TEST_FAILS, failing_test="mm_large_stale_tlb_cross_cpu"),
    # The exception path: must report and fail, not hang or triple-fault.
    Config("microvm", 2,   "run=test test=fault",    expect=FAULT, quick=True,
           must_print=FAULT_REPORT, must_events=("fault",)),
    # A kernel stack overflow: #DF on its own stack, named as an overflow.
    Config("microvm", 1,   "run=test test=overflow", expect=FAULT,
           must_print=r"stack overflow: cpu0's stack ran into its guard page",
           must_events=("fault",)),

    # Concurrent stress against a model (stress.rs), issue 5's done-when:
    # 4 vCPUs, 100,000 operations, both backends.
    Config("microvm", 4,   "run=stress seed=1 ops=100000 pv=batched", quick=True,
           timeout=180, must_events=("stress_summary",)),
    Config("q35",     4,   "run=stress seed=1 ops=100000 pv=immediate", quick=True,
           timeout=180, must_events=("stress_summary",)),
    Config("pc",      2,   "run=stress seed=2 ops=40000 pv=batched",
           timeout=120, must_events=("stress_summary",)),
    Config("microvm", 2,   "run=stress seed=3 ops=40000 pv=immediate",
           timeout=120, must_events=("stress_summary",)),
    Config("q35",     1,   "run=stress seed=4 ops=20000",
           must_events=("stress_summary",)),
    # Removing the shootdown must make the stress fail: readers on the other
    # vCPUs see unmapped generations through stale TLB entries.
    Config("microvm", 4,   "run=stress seed=1 ops=40000 no_shootdown", expect=FAILS,
           quick=True, timeout=120, must_print=r"stress FAILED: \d+ mismatches",
           must_events=("stress_summary",)),
    # The watchdog names a vCPU that stops answering and fails the run.
    Config("microvm", 2,   "run=stress deaf_cpu=1",  expect=FAILS, quick=True,
           must_print=r"watchdog: TLB shootdown: no acknowledgement .* from cpus 0x2$"),
    Config("q35",     4,   "run=stress deaf_cpu=0",  expect=FAILS,
           must_print=r"watchdog: TLB shootdown: no acknowledgement .* from cpus 0x1$"),

    # Fault injection. The allocator runs dry once, mid-run: the operation
    # gets its error, the model still holds, no frame leaks.
    Config("microvm", 1,   "run=stress ops=20000 fail_alloc_at=5",
           must_print=r"the injected allocation failure: out of", must_events=("stress_summary",)),
    Config("pc",      4,   "run=stress ops=40000 fail_alloc_at=5", timeout=120,
           must_print=r"the injected allocation failure: out of", must_events=("stress_summary",)),
    # An AP that never starts: named, the others come up and pass the tests.
    Config("q35",     4,   "run=test skip_cpu=2",    cpus_online=3, min_tests=33,
           must_print=r"\(APIC ID 2\) did not come up: skipped on purpose"),
    # No ACPI, a corrupt MADT: one CPU and a clear message.
    Config("microvm", 2,   "run=test inject=no_acpi", cpus_listed=1, cpus_online=1,
           quick=True, min_tests=33, must_print=r"no ACPI: the boot loader gave no RSDP"),
    Config("q35",     2,   "run=boot inject=madt_checksum", cpus_listed=1, cpus_online=1,
           quick=True, must_print=r"no usable ACPI: ACPI: APIC at 0x[0-9a-f]+ has a bad checksum"),
    Config("pc",      4,   "run=boot inject=madt_checksum", cpus_listed=1, cpus_online=1,
           must_print=r"no usable ACPI: ACPI: APIC at 0x[0-9a-f]+ has a bad checksum"),
    # A corrupt hvm_start_info: the real parser's message and a failure exit.
    Config("microvm", 1,   "run=boot inject=start_info_magic", expect=FAILS, quick=True,
           must_print=r"bad PVH start_info: PVH start_info magic is 0xb36ec578, expected 0x336ec578"),
    Config("pc",      1,   "run=boot inject=start_info_magic", expect=FAILS,
           must_print=r"bad PVH start_info: PVH start_info magic is 0xb36ec578, expected 0x336ec578"),
    Config("microvm", 1,   "run=boot inject=start_info_empty_map", expect=FAILS,
           must_print=r"bad PVH start_info: PVH start_info has an empty memory map"),
    # A bad command line: the key is named, the boot fails.
    Config("microvm", 1,   "run=boot bogus=1",       expect=FAILS, quick=True,
           must_print=r'bad kernel command line: unknown key "bogus"'),
    Config("microvm", 1,   "run=stress ops=12x",     expect=FAILS,
           must_print=r'bad kernel command line: bad value "12x" for key "ops"'),
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
        want_listed = config.smp if config.cpus_listed is None else config.cpus_listed
        want_online = config.smp if config.cpus_online is None else config.cpus_online
        for b in boots[:1]:
            listed, online = b.get("cpus_listed"), b.get("cpus_online")
            if listed != want_listed or online != want_online:
                problems.append(f"boot line has cpus_listed={listed} cpus_online={online}, "
                                f"expected {want_listed} and {want_online} (--smp {config.smp})")
        problems += check_stress(config, events)
        if status is not None and status != 0:
            problems.append(f"guest exit status {status}, expected 0")
        if rc != 0 and rc not in (124, 125, 126):
            problems.append(f"run-qemu.sh exited {rc}, expected 0")
    elif config.expect in (FAULT, TEST_FAILS, FAILS):
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


def check_stress(config: Config, events: list[dict]) -> list[str]:
    """A passing stress run: its summary says so, in every figure."""
    problems = []
    m = re.search(r"\bops=(\d+)", config.cmdline)
    want_ops = int(m.group(1)) if m else 0
    for s in (e for e in events if e["event"] == "stress_summary"):
        if s.get("ok") is not True:
            problems.append(f"stress summary is not ok: {s}")
        if s.get("mismatches") != 0:
            problems.append(f"stress: {s.get('mismatches')} mismatches")
        if s.get("faults_seen") != s.get("faults_expected"):
            problems.append(f"stress: {s.get('faults_seen')} of {s.get('faults_expected')} "
                            f"expected faults seen")
        if s.get("frames_leaked") != 0:
            problems.append(f"stress: {s.get('frames_leaked')} frames leaked")
        if not isinstance(s.get("ops"), int) or s["ops"] < want_ops:
            problems.append(f"stress ran {s.get('ops')} operations, ops={want_ops} asked")
    return problems


def test_counts(serial: list[str]) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) in-guest tests, or None when none ran."""
    tests = [e for e in hb_events(serial, []) if e["event"] == "test"]
    if not tests:
        return None
    skipped = sum(1 for t in tests if t.get("ok") is True
                  and str(t.get("detail", "")).startswith("skipped"))
    passed = sum(1 for t in tests if t.get("ok") is True) - skipped
    return passed, len(tests) - passed - skipped, skipped


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
    print(f"{'configuration':<{width}}  {'expect':10}  {'result':6}  seconds  "
          f"tests passed/failed/skipped")
    for r in results:
        counts = test_counts(r.serial)
        tests = "-" if counts is None else "/".join(str(n) for n in counts)
        print(f"{r.config.name:<{width}}  {r.config.expect:10}  "
              f"{'ok' if r.ok else 'FAIL':6}  {r.seconds:7.1f}  {tests}")
    print()
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
