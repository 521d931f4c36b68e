"""The course grader's worker: the exercises' tests on students' copies, in one process.

extensions/course.py runs it as a script (never imports it), in a folder holding a copy of the
kit's tests/:

    python extensions/grading.py JOB.json

JOB.json holds {"nodeids": [...], "dirs": [...], "out": "results.json", "limit": S}. For each copy
in turn its folder goes first on sys.path and every module of the copy before is forgotten, so
`import ddpm` in a test finds that copy's ddpm.py: nothing the tests import comes from the kit's
own solution. torch is imported once for all copies. results.json: {dir: {nodeid: [[outcome, error,
message], ...]}}, one entry per run (parameter), outcome "passed" or "failed"; a file that fails to
import fails its tests with that error. A test that has no answer in S seconds (an endless loop)
fails with "no answer in S s", and so do the test's other parameters, without running.
"""
import json
import re
import signal
import sys
from pathlib import Path

import pytest

sys.path.pop(0)  # this script's folder (the kit's extensions/): nothing may come from the kit
sys.dont_write_bytecode = True  # leave the students' folders as they were


def explain(excinfo, copy):
    """An exception as (type, one message a student reads), with the line of the student's
    code that raised it when it is not an assertion of the tests."""
    text = str(excinfo.value).split("\nassert ")[0].strip()  # pytest's rewritten-assert detail
    if excinfo.errisinstance((AssertionError, NotImplementedError, NoAnswer)):
        return excinfo.typename, text
    mine = [e for e in excinfo.traceback if Path(str(e.path)).resolve().is_relative_to(copy)]
    where = f" ({Path(str(mine[-1].path)).name} line {mine[-1].lineno + 1})" if mine else ""
    return excinfo.typename, f"{excinfo.typename}: {text}{where}"


class NoAnswer(Exception):
    pass


class Outcomes:
    """A pytest plugin: each test's outcome and, on failure, its first exception; a time limit of
    `limit` s per test (SIGALRM: not on Windows, where there is none)."""

    def __init__(self, copy, limit):
        self.copy, self.limit, self.results, self.broken, self.hung = copy, limit, {}, {}, set()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        base = item.nodeid.split("[")[0]
        if base in self.hung:  # another parameter of a test that hung: fail it at once
            raise NoAnswer(f"no answer in {self.limit} s")
        if not hasattr(signal, "SIGALRM"):
            yield
            return

        def stop(signum, frame):
            self.hung.add(base)
            raise NoAnswer(f"no answer in {self.limit} s")
        old = signal.signal(signal.SIGALRM, stop)
        signal.alarm(self.limit)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    def pytest_runtest_makereport(self, item, call):
        if call.excinfo is not None and item.nodeid not in self.results:
            self.results[item.nodeid] = ["failed", *explain(call.excinfo, self.copy)]
        elif call.when == "call" and item.nodeid not in self.results:
            self.results[item.nodeid] = ["passed", "", ""]

    def pytest_collectreport(self, report):  # a test file whose imports fail: say where
        if report.failed:
            lines = [ln[1:].strip() for ln in str(report.longrepr).splitlines()
                     if ln.startswith("E ")]
            files = [m for m in map(re.compile(r'File "(.+)", line (\d+)').search, lines) if m]
            where = f" ({Path(files[-1][1]).name} line {files[-1][2]})" if files else ""
            self.broken[report.nodeid] = ["failed", "ImportError", lines[-1] + where]


def grade(copy, nodeids, limit):
    """Run the tests on one copy -> {nodeid: [[outcome, error, message], ...]}, one entry per run
    of the test (one per parameter)."""
    copy = Path(copy).resolve()
    own = {p.stem for p in copy.glob("*.py")} | {"tests", "extensions", "benchmarks"}
    for name in [m for m in sys.modules if m.split(".")[0] in own]:
        del sys.modules[name]  # the previous copy's modules
    sys.path.insert(0, str(copy))
    plugin = Outcomes(copy, limit)
    pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", *nodeids], plugins=[plugin])
    sys.path.remove(str(copy))
    runs = {n: [v for k, v in plugin.results.items() if k == n or k.startswith(n + "[")]
            for n in nodeids}
    return {n: v or [plugin.broken.get(n.split("::")[0], ["failed", "Error", "did not run"])]
            for n, v in runs.items()}  # a test that never ran: its file did not import


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    results = {d: grade(d, job["nodeids"], job["limit"]) for d in job["dirs"]}
    Path(job["out"]).write_text(json.dumps(results))
