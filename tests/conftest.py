"""Shared fixtures: small image datasets made on the fly, and the real Omniglot sets beside the checkout."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def native_build_problem() -> str | None:
    """Why the metaedge under test has no compiled kernels (`metaedge._C`), with the fix; None when it has them.

    `python -m pytest` from the checkout puts the checkout first on sys.path, so `import metaedge` finds the source
    tree, which has no `_C` unless installed editable, even where `pip install .` built one into site-packages.
    Kernel tests would then skip and the run end green, testing less than plain `pytest` does: refuse instead.
    """
    import importlib.metadata
    import importlib.util

    import metaedge

    if importlib.util.find_spec("metaedge._C") is not None:
        return None
    here = Path(metaedge.__file__).parent
    try:
        dist = importlib.metadata.distribution("metaedge")
        built = [f for f in dist.files or () if f.parts[0] == "metaedge" and f.name.startswith("_C.")]
        installed = Path(dist.locate_file(built[0])).parent if built else None
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed.resolve() != here.resolve():
        return (f"metaedge is imported from {here}, which has no compiled kernels (metaedge._C), and hides the "
                f"installed build in {installed} (`python -m pytest` puts the working directory first on sys.path). "
                "Run plain `pytest`, or install the checkout editable: `pip install -e '.[test]'` (CONTRIBUTING.md)")
    return (f"metaedge at {here} has no compiled kernels (metaedge._C): install it with `pip install '.[test]'`, or "
            "`pip install -e '.[test]'` to work on it (CONTRIBUTING.md)")


def pytest_configure(config) -> None:
    # Only CUDA and TensorRT may skip for want of hardware or a package; the CPU kernels are part of metaedge.
    problem = native_build_problem()
    if problem is not None:
        raise pytest.UsageError(problem)
    share_threads_between_workers()


def share_threads_between_workers() -> None:
    """Under pytest-xdist, give each worker (and the commands it starts) its share of the cores: two workers of
    two PyTorch threads each on two cores spend their time switching, not computing."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # subprocesses: the CLI, torchrun's ranks


# Under CI (CI=true, as .ci/run runs), a skip is a test that did not run: only these may skip there.
CI_ALLOWED_SKIPS = ("CUDA", "GPU", "TensorRT")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("1", "true") and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(word in reason for word in CI_ALLOWED_SKIPS):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI, where only {', '.join(CI_ALLOWED_SKIPS)} tests may skip: {reason}"


OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
OMNIGLOT_ZIPS = [OMNIGLOT / "images_background_small1.zip", OMNIGLOT / "images_background_small2.zip"]


def png_bytes(seed: int, size: int = 32) -> bytes:
    """A random black-and-white PNG, different for every seed."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((size, size)) > 0.5).astype(np.uint8) * 255).convert("1")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_tree(files: dict[str, bytes], root: Path) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_zip(files: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def omniglot_like(groups: dict[str, int], drawers: int = 4, seed0: int = 0) -> dict[str, bytes]:
    """`group/characterNN/<id>_<drawer>.png` files: `groups` maps a group name to its number of classes."""
    files, seed = {}, seed0
    for group, classes in groups.items():
        for c in range(1, classes + 1):
            for d in range(1, drawers + 1):
                files[f"{group}/character{c:02d}/{1000 + c:04d}_{d:02d}.png"] = png_bytes(seed)
                seed += 1
    return files


@pytest.fixture
def omniglot_zips() -> list[Path]:
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip(f"the shared Omniglot data is not at {OMNIGLOT}")
    return OMNIGLOT_ZIPS


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A Conv4 (width 16, cosine) ProtoNet trained for 30 episodes: enough to beat chance, seconds to make."""
    from metaedge.train import TrainConfig, train

    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip(f"the shared Omniglot data is not at {OMNIGLOT}")
    out = tmp_path_factory.mktemp("tiny") / "run"
    train(TrainConfig(data=[str(p) for p in OMNIGLOT_ZIPS], out=str(out), way=10, query=3, episodes=30, width=16,
                      val_every=30, val_episodes=20, metric="cosine"))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run_dir, tmp_path_factory) -> Path:
    """The tiny run exported to a bundle."""
    from metaedge.exporter import export_checkpoint

    return export_checkpoint(tiny_run_dir, tmp_path_factory.mktemp("tiny") / "bundle", parity_episodes=20).bundle.path


# Session fixtures live here, not in a test module: a fixture imported into a second module is a second fixture
# to pytest, built again there (the locate pair below was built four times a run when test modules shared it).
@pytest.fixture(scope="session")
def tiny_seg_run(tmp_path_factory) -> Path:
    """A width-4 segmentation run (metaedge train --task segment) of 4 episodes on cluttered scenes."""
    from metaedge.train import TrainConfig, train

    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip(f"the shared Omniglot data is not at {OMNIGLOT}")
    out = tmp_path_factory.mktemp("locate") / "run"
    train(TrainConfig(data=[str(p) for p in OMNIGLOT_ZIPS], out=str(out), task="segment", width=4, episodes=4,
                      meta_batch=2, val_every=4, val_episodes=8, clutter=[4, 8], seed=3))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_locate_bundle(tiny_seg_run, tmp_path_factory) -> Path:
    """The segmentation run exported to a localisation bundle."""
    from metaedge.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("locate") / "bundle"
    export_checkpoint(tiny_seg_run, out)
    return out


class Interrupted(Exception):
    """Raised by `interrupt_after` to stop a training run the way a killed process would."""


def interrupt_after(episode: int):
    """An on_step callback that stops training once `episode` episodes are done (before the next one counts)."""

    def on_step(stats) -> None:
        if stats.episode == episode + 1:
            raise Interrupted

    return on_step


def assert_same_last_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    """The last checkpoints of two run directories hold the same weights, tensor by tensor."""
    import torch

    from metaedge import checkpoint as ckpt

    wa = ckpt.load(a, which=ckpt.LAST).method.state_dict()
    wb = ckpt.load(b, which=ckpt.LAST).method.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)
