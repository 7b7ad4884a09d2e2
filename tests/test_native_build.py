"""The suite refuses to run against a metaedge without its compiled kernels instead of skipping their tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import metaedge

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def run_suite_against_source_copy(tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m pytest` from a folder holding a metaedge source tree without `_C`, the installed build beside it.

    -S and an explicit PYTHONPATH: the folder first, then site-packages without its .pth files, so an editable
    install's import redirect (the developers' setup) cannot hide the source tree the way it would in a checkout.
    """
    package = tmp_path / "metaedge"
    package.mkdir()
    for name in ("__init__.py", "errors.py"):
        shutil.copy(Path(metaedge.__file__).parent / name, package / name)
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_nothing.py").write_text("def test_nothing():\n    assert True\n")
    paths = dict.fromkeys([str(tmp_path), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-S", "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_source_tree_shadowing_the_installed_build_is_refused(tmp_path):
    done = run_suite_against_source_copy(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert f"metaedge is imported from {tmp_path / 'metaedge'}" in output
    assert "hides the installed build" in output and "pip install -e" in output


def test_this_run_has_the_native_kernels():
    from metaedge import kernels

    assert kernels.native_available()


# The suite runs under pytest-xdist (pyproject's addopts): a skip turned failure on a worker must reach the report.
@pytest.mark.parametrize("ci, reason, failed, workers", [("true", "no chromium installed", True, "0"),
                                                         ("true", "no chromium installed", True, "2"),
                                                         ("true", "no CUDA build of metaedge._C or no GPU", False, "0"),
                                                         ("", "no chromium installed", False, "0")])  # fmt: skip
def test_under_ci_only_cuda_and_tensorrt_may_skip(tmp_path, ci, reason, failed, workers):
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_skip.py").write_text(f"import pytest\n\ndef test_x():\n    pytest.skip({reason!r})\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "CI"} | {"CI": ci}
    done = subprocess.run([sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-n", workers],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ("1 failed" in done.stdout) == failed, done.stdout
    assert (done.returncode == pytest.ExitCode.TESTS_FAILED) == failed
