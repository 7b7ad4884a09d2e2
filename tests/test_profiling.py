"""`metaedge profile`: the timing machinery, conditions, the schema, and short real runs through the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from metaedge import kernels
from metaedge.cli import app
from metaedge.profiling import SCHEMA_PATH, STAGES, ProfileConfig, ProfileError, parse_counts
from metaedge.profiling import conditions as cond
from metaedge.profiling.timer import CUDA_CLOCK, HOST_CLOCK, Timing, measure, overhead, statistics

runner = CliRunner()
# A short run: every stage and shape kind, a few calls each (seconds, not minutes).
SHORT = ["--batch", "1,4", "--ways", "2,5", "--shots", "1,2", "--iterations", "5", "--warmup", "1"]


def cli() -> typer.Typer:
    """The real `metaedge` app, as users run it."""
    return app


# ---- timing machinery ---------------------------------------------------------------------------------------


def test_statistics_golden_values():
    # 1..100 ms: numpy's linear percentiles are 50.5, 90.1, 99.01; the sample std is sqrt(841.666...).
    timing = Timing(cold_ns=7_000_000, samples_ns=np.arange(1, 101, dtype=np.int64) * 1_000_000, method=HOST_CLOCK)
    s = statistics(timing, items=8)
    assert s["cold_ms"] == 7.0 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(np.sqrt(841.6666667))
    assert s["throughput_per_s"] == pytest.approx(8 / 0.0505)
    assert s["iterations"] == 100 and s["items_per_call"] == 8


def test_percentiles_are_ordered_on_heavy_tails():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 50, 1000):
        samples = (rng.pareto(1.2, n) * 1e5 + 1).astype(np.int64)
        s = statistics(Timing(0, samples, HOST_CLOCK), items=1)
        assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_measure_times_start_and_first_call_as_cold_and_skips_the_warmup():
    calls, syncs = [], []

    def start():
        time.sleep(0.02)  # an expensive open, e.g. a session: it belongs to the cold call only
        return calls.append

    timing = measure(start, warmup=3, iterations=4, sync=lambda: syncs.append(1))
    assert calls == list(range(8))  # cold 0, warm-up 1-3, timed 4-7: each call sees a new input index
    assert len(timing.samples_ns) == 4 and timing.cold_ns >= 20_000_000
    assert timing.samples_ns.max() < 20_000_000 and timing.method == CUDA_CLOCK
    assert len(syncs) == 2 + 2 * 4  # around the cold call and around each timed call

    # --duration: timed calls stop at the first one that brings their total to the budget (here 20 ms).
    timed = measure(lambda: lambda i: time.sleep(0.002), warmup=0, duration_s=0.02)
    total = int(timed.samples_ns.sum())
    assert total >= 20_000_000 and total - int(timed.samples_ns[-1]) < 20_000_000
    assert 1 <= len(timed.samples_ns) <= 10 and timed.method == HOST_CLOCK


def test_overhead_of_a_noop_is_far_below_a_millisecond():
    o = overhead()
    assert 0 < o["p50_ms"] < 0.05 and o["p50_ms"] <= o["p99_ms"] and o["iterations"] >= 1000


def test_options_are_checked_before_any_work():
    assert parse_counts("1, 8,8,32", "batch") == (1, 8, 32)
    with pytest.raises(ProfileError, match="--batch: 'x' is not an integer"):
        parse_counts("1,x", "batch")
    with pytest.raises(ProfileError, match="at least 1"):
        parse_counts("0", "ways")
    with pytest.raises(ProfileError, match="exactly one of --iterations and --duration"):
        ProfileConfig(iterations=10, duration_s=1.0)
    with pytest.raises(ProfileError, match="unknown"):
        ProfileConfig(backends=("tflite",))


# ---- conditions -----------------------------------------------------------------------------------------------


def _fake_jetson(root: Path, cpu_khz: list[int], gpu_hz: int) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    for i, khz in enumerate(cpu_khz):
        freq = root / "sys" / "devices" / "system" / "cpu" / f"cpu{i}" / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_cur_freq").write_text(f"{khz}\n")
        (freq / "cpuinfo_max_freq").write_text("2201600\n")
    gpu = root / "sys" / "class" / "devfreq" / "17000000.ga10b"
    gpu.mkdir(parents=True)
    (gpu / "cur_freq").write_text(f"{gpu_hz}\n")
    (gpu / "max_freq").write_text("1300500000\n")
    return root


def test_jetson_clocks_locked_or_not(tmp_path):
    unlocked = _fake_jetson(tmp_path / "a", [2201600, 729600], 306000000)
    conditions, warnings = cond.collect(unlocked)
    info = conditions["jetson"]
    assert cond.is_jetson(unlocked) and info["clocks_locked"] is False
    assert info["model"] == "NVIDIA Jetson AGX Orin Developer Kit" and info["l4t_release"].startswith("# R36")
    assert info["not_at_max"] == ["cpu1 at 730 of 2202 MHz", "GPU 17000000.ga10b at 306 of 1300 MHz"]
    assert any("clocks are not locked" in w and "jetson_clocks" in w for w in warnings)
    assert conditions["cpu_governor"] is None  # on a Jetson the clocks say more than the governor

    locked = _fake_jetson(tmp_path / "b", [2201600, 2201600], 1300500000)
    conditions, warnings = cond.collect(locked)
    assert conditions["jetson"]["clocks_locked"] is True
    assert not any("clocks" in w for w in warnings)


def test_cpu_governor_on_other_machines(tmp_path):
    freq = tmp_path / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_governor").write_text("powersave\n")
    conditions, warnings = cond.collect(tmp_path)
    assert conditions["jetson"] is None and conditions["cpu_governor"] == "powersave"
    assert any("governor is 'powersave'" in w for w in warnings)
    conditions, _ = cond.collect(tmp_path / "nothing")
    assert conditions["cpu_governor"].startswith("not readable")


def test_contention_separates_our_cpu_time_from_other_processes():
    before = {"busy_s": 100.0, "steal_s": 1.0, "own_s": 2.0, "wall_s": 50.0}
    after = {"busy_s": 112.0, "steal_s": 1.0, "own_s": 10.0, "wall_s": 60.0}  # 12 busy CPU-s, 8 of them ours
    c = cond.contention(before, after, cores=2)
    assert c["others_cpu_s"] == pytest.approx(4.0) and c["others_share"] == pytest.approx(0.2)
    assert any("other processes used 20% of the CPU" in w for w in cond.contention_warnings(c))
    quiet = cond.contention(before, {**after, "busy_s": 108.0}, cores=2)
    assert quiet["others_share"] == 0.0 and cond.contention_warnings(quiet) == []
    assert cond.cpu_snapshot()["wall_s"] > 0


# ---- --compare on files that are not profiles ----------------------------------------------------------------


def test_compare_rejects_corrupt_and_invalid_files(tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"kind": "metaedge-profile", "figures": [')
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "metaedge-profile", "schema_version": 1}))
    result = runner.invoke(cli(), ["profile", "--compare", str(corrupt), str(other)])
    assert result.exit_code != 0 and "corrupt.json: not valid JSON" in result.output
    result = runner.invoke(cli(), ["profile", "--compare", str(other), str(other)])
    assert result.exit_code != 0 and "other.json: not a valid metaedge profile" in result.output
    result = runner.invoke(cli(), ["profile", "--compare", str(tmp_path / "missing.json"), str(other)])
    assert result.exit_code != 0 and "missing.json: no such file" in result.output


# ---- real runs -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_bundle, tiny_run_dir, tmp_path_factory) -> dict:
    """Two short runs through the CLI: A with the PyTorch backend and a report, B without a checkpoint."""
    out = tmp_path_factory.mktemp("profile")
    common = ["profile", "--bundle", str(tiny_bundle), *SHORT]
    a = runner.invoke(cli(), [*common, "--checkpoint", str(tiny_run_dir), "--json", str(out / "a.json"),
                              "--report", str(out / "report")])  # fmt: skip
    assert a.exit_code == 0, a.output
    b = runner.invoke(cli(), [*common, "--json", str(out / "b.json")])
    assert b.exit_code == 0, b.output
    return {"dir": out, "a": json.loads((out / "a.json").read_text()), "b": json.loads((out / "b.json").read_text()),
            "a_output": a.output, "b_output": b.output}  # fmt: skip


@pytest.mark.slow
def test_an_int8_bundle_is_known_as_the_export_of_its_checkpoint(tiny_run_dir, tmp_path):
    from metaedge.exporter import export_checkpoint

    # Its id ends in a digest of the calibration images, which the checkpoint alone cannot reproduce.
    bundle = export_checkpoint(tiny_run_dir, tmp_path / "b8", int8=True, calibration_size=32, parity_episodes=5,
                               force=True).bundle  # fmt: skip
    assert "-int8-" in bundle.model_id
    done = runner.invoke(cli(), ["profile", "--bundle", str(bundle.path), *SHORT, "--checkpoint", str(tiny_run_dir)])
    assert done.exit_code == 0, done.output
    assert "other weights" not in " ".join(done.output.split())


@pytest.mark.slow
def test_profile_validates_against_its_schema(runs):
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    for doc in (runs["a"], runs["b"]):
        assert list(validator.iter_errors(doc)) == []
        assert doc["schema_version"] == 1 and doc["kind"] == "metaedge-profile"


@pytest.mark.slow
def test_every_stage_is_measured_or_says_why_not(runs):
    doc = runs["a"]
    measured = {f["stage"] for f in doc["figures"]}
    status = {s["name"]: s for s in doc["stages"]}
    assert list(status) == list(STAGES)
    for name in STAGES:
        if name == "head_adaptation" and not hasattr(kernels, "adapt_head"):
            assert status[name]["status"] == "skipped" and "adapt_head" in status[name]["reason"]
            assert name not in measured
        else:
            assert status[name]["status"] == "ok" and name in measured, status[name]
    shapes = {(f["stage"], f["backend"], f["batch"], f["ways"], f["shots"]) for f in doc["figures"]}
    for backend in ("ort-cpu", "torch-cpu"):
        assert {(b, None, None) for b in (1, 4)} == {s[2:] for s in shapes if s[:2] == ("backbone", backend)}
    assert {s[3:] for s in shapes if s[0] == "prototypes"} == {(w, k) for w in (2, 5) for k in (1, 2)}
    assert {s[2:] for s in shapes if s[0] == "classify_one_image"} == {(1, w, k) for w in (2, 5) for k in (1, 2)}
    for stage in STAGES:
        assert stage in runs["a_output"]  # the terminal table lists every stage


@pytest.mark.slow
def test_figures_are_ordered_and_recomputable_from_their_samples(runs):
    for f in runs["a"]["figures"] + runs["b"]["figures"]:
        assert f["min_ms"] <= f["p50_ms"] <= f["p90_ms"] <= f["p99_ms"] <= f["max_ms"], f
        assert f["min_ms"] <= f["mean_ms"] <= f["max_ms"] and f["cold_ms"] > 0 and f["iterations"] == 5
        s = np.asarray(f["samples_ms"])
        assert f["p90_ms"] == pytest.approx(np.percentile(s, 90), abs=1e-5)
        assert f["throughput_per_s"] == pytest.approx(f["items_per_call"] / (f["mean_ms"] / 1e3))


@pytest.mark.slow
def test_skipped_backends_carry_a_reason(runs):
    a = {b["name"]: b for b in runs["a"]["backends"]}
    b = {x["name"]: x for x in runs["b"]["backends"]}
    assert a["torch-cpu"]["status"] == "ok" and a["ort-cpu"]["status"] == "ok"
    assert b["torch"]["status"] == "skipped" and "no --checkpoint" in b["torch"]["reason"]
    for doc in (runs["a"], runs["b"]):
        for backend in doc["backends"]:
            assert backend["status"] == "ok" or backend["reason"]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "tensorrt: not importable" in a["tensorrt"]["reason"]
    assert "skipped backend torch: no --checkpoint given" in " ".join(runs["b_output"].split())


@pytest.mark.slow
def test_overhead_and_memory_are_reported(runs):
    doc = runs["a"]
    assert 0 < doc["overhead"]["p50_ms"] < 1.0
    assert doc["memory"]["peak_rss_mib"] > 10 and doc["memory"]["gpu"] is None
    assert doc["conditions"]["timing_method"] == HOST_CLOCK
    assert doc["conditions"]["model"]["model_id"].startswith("protonet-conv4-")
    report = (runs["dir"] / "report" / "report.md").read_text()
    assert "no-op stage" in report and doc["conditions"]["model"]["model_id"] in report
    for png in ("stages.png", "backbone.png"):
        assert (runs["dir"] / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_compare_gives_b_over_a_per_matched_figure(runs):
    d = runs["dir"]
    result = runner.invoke(cli(), ["profile", "--compare", str(d / "a.json"), str(d / "b.json"),
                                   "--json", str(d / "c.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    comparison = json.loads((d / "c.json").read_text())
    key = lambda f: (f["stage"], f["backend"], f["batch"], f["ways"], f["shots"])  # noqa: E731
    a = {key(f): f for f in runs["a"]["figures"]}
    b = {key(f): f for f in runs["b"]["figures"]}
    assert {key(r) for r in comparison["rows"]} == set(a) & set(b)
    assert len(comparison["rows"]) > 20
    for r in comparison["rows"]:
        assert r["p50_ratio"] == pytest.approx(b[key(r)]["p50_ms"] / a[key(r)]["p50_ms"])
        assert r["mean_ratio"] == pytest.approx(b[key(r)]["mean_ms"] / a[key(r)]["mean_ms"])
    only_a = {key(f) for f in comparison["only_in_a"]}
    assert only_a == set(a) - set(b) and {k[1] for k in only_a} == {"torch-cpu"}
    assert comparison["only_in_b"] == []
    assert "B/A" in result.output and "only in A" in result.output


def test_int8_instructions_are_read_from_cpuinfo(tmp_path):
    zen3 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx avx2 fma\n"
    xeon = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni amx_int8 amx_tile\n"
    orin = "processor\t: 0\nFeatures\t: fp asimd asimddp asimdhp i8mm\n"
    assert cond.int8_instructions(zen3) == ["avx2"]
    assert cond.int8_instructions(xeon) == ["avx2", "avx512f", "avx512_vnni", "amx_int8"]
    assert cond.int8_instructions(orin) == ["asimddp", "i8mm"]
    assert cond.int8_instructions("model name\t: something\n") == []
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(xeon)
    assert cond.cpu_info(tmp_path)["int8_instructions"] == ["avx2", "avx512f", "avx512_vnni", "amx_int8"]


@pytest.mark.slow
def test_compare_names_a_change_of_int8_instructions(runs):
    from metaedge.profiling.compare import compare_profiles

    assert runs["a"]["conditions"]["cpu"]["int8_instructions"] == cond.cpu_info()["int8_instructions"]
    a = json.loads(json.dumps(runs["a"]))
    b = json.loads(json.dumps(a))
    b["conditions"]["cpu"]["int8_instructions"] = ["avx2", "avx512_vnni"]
    a["conditions"]["cpu"]["int8_instructions"] = ["avx2"]
    differ = compare_profiles(a, b)["conditions_differ"]
    assert {"what": "int8 instructions", "a": ["avx2"], "b": ["avx2", "avx512_vnni"]} in differ
