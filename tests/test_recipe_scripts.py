"""The long recipes in scripts/ survive an interruption: a training run that did not end goes on from its last
checkpoint instead of being exported as finished, and a finished one is not trained again.

A taught ResNet-12 at 42 px is four hours of a Zen 1 CPU, longer than a working session; before this, a rerun of
scripts/distill_ensemble.sh found the interrupted run's last.safetensors and went straight on to export it. Here
`metaedge` and `python` are stand-ins on PATH that record their arguments, so the script's own logic is what runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for the CLI: `train` writes the run's checkpoint, then fails where STOP_TRAINING is set (an
# interrupted run) or prints its JSON; `export` writes a manifest; every call is logged.
FAKE_METAEDGE = """#!/usr/bin/env bash
echo "metaedge $*" >>"$CALLS"
out=
prev=
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
case $1 in
  train) mkdir -p "$out"; : >"$out/last.safetensors"; [ -n "${STOP_TRAINING:-}" ] && exit 1; echo '{"episodes": 4}' ;;
  export) mkdir -p "$out"; echo '{}' >"$out/manifest.json" ;;
esac
"""
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >>"$CALLS"
"""


@pytest.fixture
def fake_tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("metaedge", FAKE_METAEDGE), ("python", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls),
           "LOSSES": "kl", "PLAIN": "0", "EVAL_SEEDS": "1", "EPISODES": "4"}  # fmt: skip

    def run(out: Path, **extra: str) -> tuple[int, list[str]]:
        calls.write_text("")
        result = subprocess.run(["bash", str(ROOT / "scripts" / "distill_ensemble.sh"), str(out)],
                                env={**env, **extra}, capture_output=True, text=True)  # fmt: skip
        return result.returncode, calls.read_text().splitlines()

    return run


def trainings(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("metaedge train")]


def test_an_interrupted_distillation_resumes_and_a_finished_one_is_kept(fake_tools, tmp_path):
    out = tmp_path / "runs"
    code, calls = fake_tools(out, STOP_TRAINING="1")
    assert code != 0
    assert len(trainings(calls)) == 1 and " --overwrite " in trainings(calls)[0]
    assert not any(c.startswith("metaedge export") for c in calls)  # the script stopped with the run
    assert (out / "kl" / "last.safetensors").is_file() and not (out / "kl.train.json").exists()
    (out / "kl.train.json").write_text("")  # what the script's shell redirect left of an interrupted run before

    code, calls = fake_tools(out)
    assert code == 0
    assert len(trainings(calls)) == 1 and " --resume " in trainings(calls)[0]
    assert " --overwrite " not in trainings(calls)[0]  # that would have thrown the interrupted hours away
    assert (out / "kl.train.json").read_text().strip() == '{"episodes": 4}'
    assert any(c.startswith("metaedge export") for c in calls)

    code, calls = fake_tools(out)
    assert code == 0 and trainings(calls) == []  # finished: neither trained again nor started over
