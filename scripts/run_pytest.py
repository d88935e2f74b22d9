"""Runs pytest the way scripts/test.sh and scripts/test_torch.sh do, with this interpreter:

    python scripts/run_pytest.py tests/python [more pytest arguments]

- On all cores with pytest-xdist when it is installed (``-n <cores> --dist loadgroup``: tests
  marked ``@pytest.mark.xdist_group("<name>")`` run one after another on one worker).
  Q8_PYTEST_WORKERS sets the worker count; 0 (or a missing pytest-xdist) runs one process.
- pytest's exit status 5 (no tests collected, e.g. a -k that selects nothing) is reported and
  counts as success; every other status is passed on.
"""
import importlib.util
import os
import subprocess
import sys


def main(argv):
    workers = os.environ.get("Q8_PYTEST_WORKERS")
    workers = len(os.sched_getaffinity(0)) if workers is None or workers == "" else int(workers)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if workers > 1 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(workers), "--dist", "loadgroup"]
    elif workers > 1:
        print("run_pytest: pytest-xdist is not installed: one process (pip install pytest-xdist)", flush=True)
    cmd += argv
    print("+ " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    if rc == 5:
        print("run_pytest: pytest collected no tests (exit 5): nothing to run here, not a failure", flush=True)
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
