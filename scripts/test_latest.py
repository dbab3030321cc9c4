"""Run the suite against the newest versions pyproject.toml allows, not the lock.

`make test-latest` calls this. It builds a throwaway venv, installs relaylab with the
newest allowed dependencies, prints which of them differ from requirements.lock.txt,
then runs the same pytest command as `make test`. Run it before a workshop and before
`make lock`: a dependency release that breaks a lesson shows here first.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock.txt"
# This one checks that the venv holds exactly the lock, which is false here by design.
LOCK_ONLY_TEST = "installed_versions_match_the_lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)", LOCK.read_text(), re.MULTILINE)
    return {canonical(name): version for name, version in pins}


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the throwaway venv")
    parser.add_argument("pytest_args", nargs="*", help="for pytest (default: tests notebooks)")
    options = parser.parse_args()

    venv = Path(tempfile.mkdtemp(prefix="relaylab-latest-"))
    python = venv / "bin" / "python"
    try:
        print(f"test-latest: building a throwaway venv in {venv}", flush=True)
        run(sys.executable, "-m", "venv", venv)
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "-e", ".[test]")

        listing = subprocess.run(
            [python, "-m", "pip", "list", "--format=json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        newest = {canonical(p["name"]): p["version"] for p in json.loads(listing)}
        locked = locked_versions()
        changed = sorted(n for n in locked if n in newest and newest[n] != locked[n])
        print(f"test-latest: {len(changed)} of {len(locked)} locked packages have a newer release")
        for name in changed:
            print(f"  {name}: {locked[name]} (lock) -> {newest[name]}")

        targets = options.pytest_args or ["tests", "notebooks"]
        command = [python, "-m", "pytest", "-n", "auto", "--dist", "loadgroup"]
        command += ["--nbval-lax", "--nbval-current-env"]
        command += ["-k", f"not {LOCK_ONLY_TEST}", *targets]
        returncode = subprocess.run([str(c) for c in command], cwd=ROOT).returncode
        verdict = "passes" if returncode == 0 else f"FAILS (pytest exit {returncode})"
        print(f"test-latest: the suite {verdict} with the newest allowed versions")
        if returncode == 0 and changed:
            print("test-latest: `make lock` takes these; run `make test`, commit the lock")
        return returncode
    finally:
        if options.keep:
            print(f"test-latest: kept {venv}")
        else:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
