#!/usr/bin/env python3
"""Host tests of tests/guest.py's verdicts, on made-up serial logs: no QEMU.

Each test feeds check() the outcome of a boot that must fail (a dropped
in-guest test, a skip where the machine could run it, a dead IPI path, the
wrong exit status for a signal or a refused option) and asserts the problem
is named; and the matching good outcome, which must pass.

    python3 tests/test_guest.py
"""

from __future__ import annotations

import json
import signal
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guest  # noqa: E402
from guest import PASS, REFUSED, STOPPED, Config, check  # noqa: E402


def hb(event: str, **fields) -> str:
    return "HB " + json.dumps({"event": event, **fields})


def boot(smp: int, **fields) -> str:
    return hb("boot", cpus_listed=smp, cpus_online=smp, ipi_ok=True, **fields)


def test_run(names, skipped=(), smp=2, listed=None) -> list[str]:
    lines = [boot(smp)]
    for n in names:
        skip = n in skipped
        lines.append(hb("test", name=n, ok=True, skipped=skip,
                        detail="skipped: needs a second vCPU" if skip else "fine"))
    lines.append(hb("tests", listed=len(guest.IN_GUEST_TESTS) if listed is None else listed,
                    ran=len(names), passed=len(names) - len(skipped),
                    skipped=len(skipped), failed=0))
    lines.append(hb("exit", status=0))
    return lines


class FullTestRuns(unittest.TestCase):
    config = Config("microvm", 2, "run=test")

    def test_every_test_reported_passes(self):
        self.assertEqual(check(self.config, 0, test_run(guest.IN_GUEST_TESTS), []), [])

    def test_a_dropped_test_fails_the_row(self):
        names = [n for n in guest.IN_GUEST_TESTS if n != "mm_protect"]
        problems = check(self.config, 0, test_run(names), [])
        self.assertTrue(any("did not report: mm_protect" in p for p in problems), problems)

    def test_an_unknown_test_fails_the_row(self):
        problems = check(self.config, 0, test_run([*guest.IN_GUEST_TESTS, "new_one"]), [])
        self.assertTrue(any("add them to IN_GUEST_TESTS" in p for p in problems), problems)

    def test_a_single_test_run_needs_only_that_test(self):
        config = Config("microvm", 2, "run=test test=mm_protect")
        self.assertEqual(check(config, 0, test_run(["mm_protect"]), []), [])


class Skips(unittest.TestCase):
    def test_a_skip_on_a_machine_that_can_run_it_fails(self):
        config = Config("microvm", 2, "run=test")
        lines = test_run(guest.IN_GUEST_TESTS, skipped={"mm_concurrent_flush"})
        problems = check(config, 0, lines, [])
        self.assertTrue(any("'mm_concurrent_flush' skipped on a machine that can run it" in p
                            for p in problems), problems)

    def test_a_skip_for_want_of_a_second_vcpu_passes_at_one(self):
        config = Config("microvm", 1, "run=test")
        lines = test_run(guest.IN_GUEST_TESTS, skipped=guest.NEEDS_TWO_CPUS, smp=1)
        self.assertEqual(check(config, 0, lines, []), [])

    def test_an_old_style_skip_counts_as_a_skip(self):
        t = {"event": "test", "name": "x", "ok": True, "detail": "skipped: because"}
        self.assertTrue(guest.is_skipped(t))
        self.assertEqual(guest.test_counts([hb("test", **{k: v for k, v in t.items()
                                                          if k != "event"})]), (0, 0, 1))


class BootLine(unittest.TestCase):
    def test_a_failed_ipi_ping_fails_the_row(self):
        config = Config("microvm", 2, "run=boot")
        lines = [hb("boot", cpus_listed=2, cpus_online=2, ipi_ok=False), hb("exit", status=0)]
        problems = check(config, 0, lines, [])
        self.assertTrue(any("ipi_ok=False" in p for p in problems), problems)

    def test_boot_fields_are_checked(self):
        config = Config("microvm", 2, "run=boot", boot_fields=(("apic", "x2apic"),))
        good = [boot(2, apic="x2apic"), hb("exit", status=0)]
        bad = [boot(2, apic="xapic"), hb("exit", status=0)]
        self.assertEqual(check(config, 0, good, []), [])
        self.assertTrue(any("apic='xapic', expected 'x2apic'" in p
                            for p in check(config, 0, bad, [])))


class RefusedAndStopped(unittest.TestCase):
    refused = Config("microvm", 1, "run=boot", expect=REFUSED, must_say=r"too small")
    stopped = Config("microvm", 2, "run=stress soak", expect=STOPPED,
                     signal=("qemu", signal.SIGTERM), must_say=r"stopped by signal 15")

    def test_a_refusal_needs_status_2_and_its_message(self):
        self.assertEqual(check(self.refused, 2, [], ["run-qemu: --mem 1M is too small"]), [])
        self.assertTrue(check(self.refused, 125, [], ["run-qemu: --mem 1M is too small"]))
        self.assertTrue(check(self.refused, 2, [], ["run-qemu: something else"]))
        self.assertTrue(check(self.refused, 2, ["[cpu0] INFO booting"],
                              ["run-qemu: --mem 1M is too small"]))

    def test_a_signal_needs_128_plus_n_and_its_message(self):
        said = ["run-qemu: STOPPED: QEMU was stopped by signal 15 from outside"]
        self.assertEqual(check(self.stopped, 143, [boot(2)], said), [])
        # Reported as a guest reset, as before the fix: the row fails.
        self.assertTrue(check(self.stopped, 125, [boot(2)], said))
        self.assertTrue(check(self.stopped, 143, [boot(2)], ["run-qemu: FAILED: reset"]))


class Pass(unittest.TestCase):
    def test_a_wrong_exit_status_fails_a_pass_row(self):
        config = Config("microvm", 1, "run=boot")
        problems = check(config, 1, [boot(1), hb("exit", status=1)], [])
        self.assertTrue(any("guest exit status 1" in p for p in problems), problems)

    def test_the_matrix_names_are_unique(self):
        names = [c.name for c in guest.MATRIX]
        self.assertEqual(len(names), len(set(names)))

    def test_every_expectation_is_known(self):
        known = {PASS, guest.FAULT, guest.FAILS, guest.TEST_FAILS, REFUSED, STOPPED}
        self.assertTrue(all(c.expect in known for c in guest.MATRIX))
        self.assertTrue(all(c.signal for c in guest.MATRIX if c.expect == STOPPED))


if __name__ == "__main__":
    unittest.main()
