"""Installs the CPU build of torch (the version constraints.txt pins) into this interpreter's
environment, on any machine: the set-up's first step (see the Makefile).

pip is first asked, without installing anything, what it would install from the configured indexes.
Where that is a CPU build (this project's development machines have one on disk), it is installed as
it is. Where it is a CUDA build (PyPI's torch for Linux: about 20 nvidia-* packages, several GB), the
CPU build comes from PyTorch's CPU index instead (``--cpu-index``). ``--dry-run`` prints the decision
and installs nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def planned(requirements: list[str], pip_args: list[str]) -> list[dict]:
    """What ``pip install`` would install: the report's entries (name, version, ...)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report", "-",
         *pip_args, *requirements],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"install_torch: pip could not resolve {' '.join(requirements)}:\n{done.stderr[-3000:]}")
    return [item["metadata"] for item in json.loads(done.stdout)["install"]]


def is_cuda_build(packages: list[dict]) -> bool:
    torch = next(p for p in packages if p["name"].lower() == "torch")
    return "+cu" in torch["version"] or any(p["name"].lower().startswith("nvidia-") for p in packages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--constraints", default="constraints.txt", help="the file that pins torch")
    parser.add_argument("--cpu-index", default="https://download.pytorch.org/whl/cpu", help="PyTorch's CPU wheels")
    parser.add_argument("--dry-run", action="store_true", help="print the decision, install nothing")
    parser.add_argument("requirements", nargs="*", default=["torch"], help="default: torch")
    args = parser.parse_args()

    constraints = ["-c", args.constraints]
    packages = planned(args.requirements, constraints)
    torch = next(p for p in packages if p["name"].lower() == "torch")
    if is_cuda_build(packages):
        # The CPU index holds torch and its dependencies; PyPI stays as the extra index for the rest.
        source = ["--index-url", args.cpu_index, "--extra-index-url", "https://pypi.org/simple"]
        print(f"install_torch: the configured indexes give torch {torch['version']}, a CUDA build with "
              f"{sum(p['name'].lower().startswith('nvidia-') for p in packages)} nvidia packages; "
              f"taking the CPU build from {args.cpu_index}")  # fmt: skip
    else:
        source = []
        print(f"install_torch: the configured indexes give torch {torch['version']}, a CPU build: installing it")
    if args.dry_run:
        return 0
    command = [sys.executable, "-m", "pip", "install", "--quiet", *source, *constraints, *args.requirements]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
