"""What the sdist and the wheel carry: the license, the typing marker, and (sdist) the whole test
suite. Built from a copy of the tracked files with setuptools' own backend, without compiling the
extension (QA_KERNELS_NO_BUILD=1): the contents, not the build, are under test here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, list[str]]:
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout (the sdist is built from its tracked files)")
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "QA_KERNELS_NO_BUILD": "1"}
    names = []
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state between them
        script = f"import sys; from setuptools import build_meta; print('BUILT', build_meta.{hook}(sys.argv[1]))"
        done = subprocess.run([sys.executable, "-c", script, str(out)], cwd=src, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        names.append(next(line for line in done.stdout.splitlines() if line.startswith("BUILT ")).split()[1])
    sdist_name, wheel_name = names
    with tarfile.open(out / sdist_name) as sdist:
        sdist_files = [m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()]
        sdist.extractall(out / "sdist", filter="data")
    with zipfile.ZipFile(out / wheel_name) as wheel:
        wheel_files = wheel.namelist()
    return {"sdist": sdist_files, "wheel": wheel_files, "sdist_dir": next((out / "sdist").iterdir())}


def test_sdist_ships_the_license_typing_marker_and_a_runnable_test_suite(built):
    files = set(built["sdist"])
    for name in ("LICENSE", "qa_kernels/py.typed", "tests/__init__.py", "tests/conftest.py", "tests/utils.py"):
        assert name in files, f"{name} missing from the sdist"
    listed = subprocess.run(["git", "ls-files", "tests"], cwd=REPO, capture_output=True, text=True, check=True)
    tracked_tests = {name for name in listed.stdout.split() if name.endswith(".py")}
    assert tracked_tests <= files, f"tests missing from the sdist: {sorted(tracked_tests - files)}"


def test_sdist_tests_run_from_the_unpacked_sdist(built):
    """conftest.py and tests/utils.py import there: a few test files pass on the sdist's own sources
    (the torch implementation; no extension is built for this)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_KERNELS_REQUIRE")}
    env.update(QA_KERNELS_NO_JIT="1", QA_KERNELS_BACKEND="torch", PYTHONPATH=str(built["sdist_dir"]))
    tests = ["tests/ops/qa_head/test_bad_input.py", "tests/test_module.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=built["sdist_dir"], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_wheel_ships_the_typing_marker_the_license_the_sources_and_the_build_record(built):
    files = built["wheel"]
    assert "qa_kernels/py.typed" in files
    # the sources, for the just-in-time build of a wheel without the library, and the build's record
    assert "qa_kernels/csrc/schemas.cpp" in files and "qa_kernels/csrc/qa_head/qa_head.h" in files
    assert "qa_kernels/_build.json" in files
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in files), files
    assert not any(name.startswith("tests/") for name in files), "the tests are not part of the installed package"


def test_triton_is_an_extra_not_a_core_dependency():
    """On CPU triton only runs the test suite's interpreter (CUDA builds of torch bring their own)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("triton") for dep in meta["dependencies"])
    for extra in ("triton", "test"):
        assert any(dep.startswith("triton") for dep in meta["optional-dependencies"][extra]), extra
