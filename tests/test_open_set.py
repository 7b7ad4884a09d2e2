"""Open-set thresholds per number of shots: calibration, the runtime applying them, recalibrating a bundle.

The shipped reference bundle is calibrated on drawers 1-10 of its held-out alphabets (Greek, Korean); these
tests read drawers 11-20 only, so every rate they check is measured on drawings the calibration never saw.
Protocol (issue 20): 20 Greek characters enrolled from `shot` drawings by the same drawers, every other
drawing of them as genuine queries, every Korean drawing by the other drawers as strangers.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import OMNIGLOT_ZIPS
from typer.testing import CliRunner

from metaedge import bundle as bundle_io
from metaedge import kernels
from metaedge.cli import app
from metaedge.data import LoadedDataset, PreprocessSpec, open_dataset
from metaedge.demo import SAMPLES
from metaedge.open_set import (
    CalibrationError,
    auroc,
    calibrate_curve,
    calibration_data,
    embed_with_bundle,
    jackknife_rate,
    measure,
    parse_drawers,
    recalibrate_bundle,
    threshold_for,
)
from metaedge.ort import create_session, run_batched
from metaedge.runtime import REFERENCE_BUNDLE, Runtime

CALIBRATION_DRAWERS = list(range(1, 11))  # what `metaedge calibrate metaedge/reference/bundle --drawers 1-10` reads
TEST_DRAWERS = list(range(11, 21))
ENROLLED, STRANGERS, WAY = "Greek", "Korean", 20


class HeldOut:
    """Drawers 11-20 of Greek and Korean: decoded, written out as PNG files (row i is files[i]) and embedded."""

    def __init__(self, root: Path) -> None:
        self.bundle = bundle_io.load(REFERENCE_BUNDLE)
        self.open_set = self.bundle.manifest["open_set"]
        dataset = open_dataset([str(p) for p in OMNIGLOT_ZIPS]).subset([ENROLLED, STRANGERS])
        classes = [replace(c, images=tuple(r for r in c.images if r.drawer in TEST_DRAWERS)) for c in dataset.classes]
        dataset = replace(dataset, classes=classes)
        self.files = []
        for cls in dataset.classes:  # load() decodes in this order: class by class, image by image
            for ref in cls.images:
                path = root / cls.group / cls.name / Path(ref.member).name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(dataset.sources[ref.source].read(ref.member))
                self.files.append(path)
        self.data = dataset.load(self.bundle.preprocess)
        group = np.asarray(self.data.class_groups)[self.data.labels]
        greek, self.korean = np.flatnonzero(group == ENROLLED), np.flatnonzero(group == STRANGERS)
        # One embedding pass for the module; strangers are never enrolled, so only Greek needs the enroll graph
        # (Korean rows of `support` stay zero and unused).
        self.queries = np.zeros((len(self.data.labels), self.bundle.embedding_dim), np.float32)
        self.support = self.queries.copy()
        self.queries[greek], self.support[greek] = embed_with_bundle(self.bundle, _rows(self.data, greek))
        session = create_session(self.bundle.onnx_path, ("CPUExecutionProvider",), 0)
        self.queries[self.korean] = run_batched(session, self.data.spec.normalize(self.data.pixels[self.korean]), 64)
        self.greek_classes = np.unique(self.data.labels[greek])
        self.measured = {row["shots"]: row for row in measure(
            self.queries, self.support, self.data, self.bundle.metric, self.open_set, enrolled_group=ENROLLED,
            stranger_group=STRANGERS, shots=(1, 5), way=WAY, episodes=20)}  # fmt: skip

    def entry(self, shot: int) -> dict:
        assert "curve" in self.open_set, "recalibrate: metaedge calibrate metaedge/reference/bundle --drawers 1-10"
        return next(e for e in self.open_set["curve"] if e["shots"] == shot)

    def episode(self, shot: int, seed: int) -> tuple[list[int], dict[int, np.ndarray], np.ndarray, np.ndarray]:
        """(classes, support rows per class, genuine query rows, stranger rows) of one episode of the protocol."""
        rng = np.random.default_rng(seed)
        chosen = rng.choice(TEST_DRAWERS, size=shot, replace=False)
        classes = sorted(int(c) for c in rng.choice(self.greek_classes, size=WAY, replace=False))
        by_support = np.isin(self.data.drawers, chosen)
        support = {c: np.flatnonzero((self.data.labels == c) & by_support) for c in classes}
        queries = np.flatnonzero(np.isin(self.data.labels, classes) & ~by_support)
        return classes, support, queries, self.korean[~by_support[self.korean]]

    def expected_scores(self, support: dict[int, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Best similarity of `rows` to the prototypes of `support`, from the module's embeddings."""
        protos = np.stack([self.support[idx].mean(axis=0) for idx in support.values()]).astype(np.float32)
        return kernels.logits(self.queries[rows], protos, metric=self.bundle.metric, scale=1.0).max(axis=1)

    def band(self, shot: int, rate: str) -> float:
        """How far one episode's rate may land from the manifest's: 3 combined standard deviations (root sum of
        squares) of the episode-to-episode spread (one support drawer decides much), the test drawers' own
        sampling error and the calibration's (both jackknifed over ten drawers)."""
        m, e = self.measured[shot], self.entry(shot)
        sd, se, cal = ((m["episode_accept_sd"], m["accept_se"], e["known_accept_se"]) if rate == "accept"
                       else (m["episode_reject_sd"], m["reject_se"], e["unknown_reject_se"]))  # fmt: skip
        tolerance = 3 * math.sqrt(sd**2 + se**2 + cal**2)
        # Tight enough to matter: ignoring the thresholds rejects no stranger (0.84 away at one shot). Which of
        # the thresholds applies is checked exactly, score by score, where the band is used. One episode's 3 SDs
        # come to 0.08-0.12 for the shipped bundles (the single network's 1-shot reject rate: 0.1205).
        assert 0 < tolerance < 0.13, (shot, rate, tolerance)
        return tolerance


def _rows(data, rows: np.ndarray):
    return replace(data, pixels=data.pixels[rows], labels=data.labels[rows], drawers=data.drawers[rows])


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> HeldOut:
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not beside the checkout")
    return HeldOut(tmp_path_factory.mktemp("heldout"))


# -- the numbers: auroc, standard errors, the threshold rule ------------------------------------------------------
def test_auroc_is_the_probability_a_positive_outscores_a_negative():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 60).round(1), rng.normal(0, 1, 45).round(1)  # rounded: many ties
    pairs = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(pos, neg) == pytest.approx(pairs, abs=1e-12)
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auroc([0.0], [1.0]) == 0.0 and auroc([1.0], [1.0]) == 0.5
    with pytest.raises(CalibrationError):
        auroc([], [1.0])


def test_jackknife_counts_people_not_scores():
    # Two people, 100 scores each: all of one person's hit, none of the other's. Scores alone would say the
    # rate is known to +-5%; leaving one person out moves it from 1 to 0.
    hits = np.repeat([True, False], 100)
    rate, se = jackknife_rate(hits, np.repeat([[0], [1]], 100, axis=0))
    assert rate == 0.5 and se == pytest.approx(0.5)
    # Every score involves both people (as support drawers): nothing is left to estimate from.
    assert math.isnan(jackknife_rate(hits, np.tile([0, 1], (200, 1)))[1])
    # Ten people alike: no spread.
    assert jackknife_rate(np.ones(50, bool), np.arange(50)[:, None] % 10)[1] == 0.0


def test_threshold_for_a_number_of_shots():
    curve = {"threshold": -2.0, "curve": [{"shots": s, "threshold": t} for s, t in ((5, -2.0), (1, -3.5), (2, -2.7))]}
    assert [threshold_for(curve, s) for s in (1, 2, 3, 4, 5, 6, 50)] == [-3.5, -2.7, -2.7, -2.7, -2.0, -2.0, -2.0]
    from_two = {"curve": [{"shots": 5, "threshold": -2.0}, {"shots": 2, "threshold": -2.7}]}
    assert threshold_for(from_two, 1) == -2.7  # fewer shots than calibrated: the smallest entry, not the largest
    assert threshold_for({"threshold": 0.4, "known_accept_rate": 0.95}, 1) == 0.4  # a bundle from before curves
    assert threshold_for(None, 1) is None and threshold_for({}, 3) is None
    assert parse_drawers("1-3, 7,9-10") == [1, 2, 3, 7, 9, 10]
    for bad in ("", "3-1", "a", "0-4"):
        with pytest.raises(CalibrationError):
            parse_drawers(bad)


def _synthetic(groups: int = 2, classes: int = 12, drawers: int = 8, noise: float = 0.6, seed: int = 0):
    """(embeddings (N, 8), LoadedDataset): classes as random unit centres, each drawing its centre plus
    its drawer's offset plus noise, so drawers matter as they do on Omniglot."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups * classes, 8))
    style = rng.normal(scale=0.3, size=(drawers, 8))
    labels = np.repeat(np.arange(groups * classes), drawers)
    who = np.tile(np.arange(1, drawers + 1), groups * classes)
    z = (centres[labels] + style[who - 1] + rng.normal(scale=noise, size=(len(labels), 8))).astype(np.float32)
    data = LoadedDataset(pixels=np.zeros((len(labels), 1, 1, 1), np.uint8), labels=labels, drawers=who,
                         class_groups=[f"g{c // classes}" for c in range(groups * classes)],
                         class_keys=[f"g{c // classes}/c{c}" for c in range(groups * classes)],
                         spec=PreprocessSpec())  # fmt: skip
    return z, data


def test_calibrate_curve_sets_each_threshold_at_its_accept_rate():
    z, data = _synthetic()
    settings = dict(shots=(1, 3), way=8, query=3, strangers=4, episodes=40)
    open_set = calibrate_curve(z, data, "sqeuclidean", **settings)
    one, three = open_set["curve"]
    assert (one["shots"], three["shots"], one["known_queries"]) == (1, 3, 40 * 8 * 3)
    assert one["threshold"] < three["threshold"]  # one drawing makes a noisier prototype: genuine scores fall
    assert open_set["threshold"] == three["threshold"] and "8-way" in open_set["protocol"]
    assert 0.94 <= one["known_accept_rate"] <= 0.96 and 0 < one["known_accept_se"] < 0.1
    strict = calibrate_curve(z, data, "sqeuclidean", **settings, accept_rate=0.8)["curve"][0]
    assert 0.79 <= strict["known_accept_rate"] <= 0.81 and strict["threshold"] > one["threshold"]
    assert strict["unknown_reject_rate"] >= one["unknown_reject_rate"]
    # Strangers far away: every one rejected, perfectly told apart; strangers that are copies of enrolled
    # classes' drawings: no threshold can tell them apart.
    far = z.copy()
    far[np.asarray(data.class_groups)[data.labels] == "g1"] += 100.0
    far[np.asarray(data.class_groups)[data.labels] == "g0"] -= 100.0
    apart = calibrate_curve(far, data, "sqeuclidean", **settings)["curve"][0]
    assert apart["unknown_reject_rate"] == 1.0 and apart["auroc"] == 1.0
    same = z.copy()
    half = len(z) // 2
    same[half:] = z[:half]  # group g1 draws exactly what g0 draws
    alike = calibrate_curve(same, data, "sqeuclidean", **settings)["curve"][0]
    assert alike["auroc"] < 0.75 and alike["unknown_reject_rate"] < 0.5
    # Support embeddings, where given, make the prototypes: shifted ones lower every genuine score.
    shifted = calibrate_curve(z, data, "sqeuclidean", support_embeddings=z + 1.0, **settings)["curve"][0]
    assert shifted["threshold"] < one["threshold"] - 1.0
    with pytest.raises(CalibrationError, match="needs a group"):
        calibrate_curve(z, data, "sqeuclidean", shots=(8,), query=3)  # 8 drawers cannot give 8 shots + queries


def test_one_small_group_lends_its_own_classes_as_strangers():
    """CIFAR's 4 held-out classes, or one user folder: one group, so strangers are the episode's other classes."""
    z, data = _synthetic(groups=1, classes=6)
    open_set = calibrate_curve(z, data, "sqeuclidean", shots=(1,), way=8, query=3, strangers=5, episodes=30)
    entry = open_set["curve"][0]
    # six classes: at least two enrolled, up to five strangers, so four strangers and two enrolled per episode
    assert open_set["protocol"].startswith("2-way within one group,")
    assert "strangers: 4 other classes of the group x 3 images" in open_set["protocol"]
    assert (entry["known_queries"], entry["stranger_queries"]) == (30 * 2 * 3, 30 * 4 * 3)
    assert 0.5 < entry["auroc"] <= 1.0 and 0.9 <= entry["known_accept_rate"] <= 1.0
    fewer = calibrate_curve(z, data, "sqeuclidean", shots=(1,), way=8, query=3, strangers=2, episodes=30)
    assert fewer["protocol"].startswith("4-way") and "strangers: 2 other" in fewer["protocol"]  # more enrolled
    # two classes cannot give two enrolled and a stranger
    z2, two = _synthetic(groups=1, classes=2)
    with pytest.raises(CalibrationError, match=r"^1-shot calibration needs a group with 2 classes of 4 images "
                                               r"\(by 2 drawers\) plus 1 stranger classes; usable classes per "
                                               r"group: \{'g0': 2\}$"):  # fmt: skip
        calibrate_curve(z2, two, "sqeuclidean", shots=(1,), query=3)
    # Classes with too few drawers for the shots are not counted as usable
    with pytest.raises(CalibrationError, match=r"usable classes per group: none$"):
        calibrate_curve(z, data, "sqeuclidean", shots=(8,), query=0)


@pytest.mark.slow
def test_export_calibrates_on_the_validation_groups_not_the_test_groups(tiny_bundle):
    manifest = bundle_io.load(tiny_bundle).manifest
    open_set, split = manifest["open_set"], manifest["training"]["split"]
    assert open_set["data"]["part"] == "val" and open_set["data"]["groups"] == split["val"]
    assert not set(open_set["data"]["groups"]) & set(split["test"] + split["train"])
    assert [e["shots"] for e in open_set["curve"]] == [1, 2, 3, 4, 5]
    assert open_set["threshold"] == open_set["curve"][-1]["threshold"]


# -- the shipped bundle's curve, on drawings it never saw ---------------------------------------------------------
def test_the_shipped_bundle_is_calibrated_per_number_of_shots():
    open_set = bundle_io.load(REFERENCE_BUNDLE).manifest["open_set"]
    curve = open_set["curve"]
    assert [e["shots"] for e in curve] == [1, 2, 3, 4, 5]
    assert open_set["data"]["drawers"] == CALIBRATION_DRAWERS and not set(CALIBRATION_DRAWERS) & set(TEST_DRAWERS)
    assert open_set["data"]["groups"] == sorted([ENROLLED, STRANGERS])
    # Fewer shots, noisier prototypes, lower genuine scores: the threshold must fall with them.
    thresholds = [e["threshold"] for e in curve]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    assert open_set["threshold"] == thresholds[-1]  # what older metaedge applies to every class
    assert all(e["known_accept_rate"] == pytest.approx(open_set["accept_rate"], abs=0.005) for e in curve)
    assert all(0.5 < e["auroc"] <= 1.0 and e["known_accept_se"] > 0 for e in curve)


@pytest.mark.slow
@pytest.mark.parametrize("shot", [1, 5])
def test_unseen_drawers_are_accepted_and_strangers_rejected_at_the_recorded_rates(heldout, shot):
    m, e = heldout.measured[shot], heldout.entry(shot)
    assert m["threshold"] == e["threshold"]
    # 20 episodes pooled: the rates differ from the manifest's by the test and calibration drawers' sampling.
    for rate, recorded, se, cal in (("accept", e["known_accept_rate"], m["accept_se"], e["known_accept_se"]),
                                    ("reject", e["unknown_reject_rate"], m["reject_se"], e["unknown_reject_se"])):
        tolerance = 3 * math.hypot(se, cal)
        assert tolerance < 0.1
        assert abs(m[f"{rate}_rate"] - recorded) <= tolerance, (shot, rate, m[f"{rate}_rate"], recorded, tolerance)


# -- the runtime applies them ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("shot", [1, 5])
def test_classify_uses_the_threshold_for_the_shots_of_each_class(heldout, shot):
    classes, support, genuine, strangers = heldout.episode(shot, seed=shot)
    threshold = threshold_for(heldout.open_set, shot)
    with Runtime(REFERENCE_BUNDLE) as rt:
        for c in classes:
            rt.enroll(f"c{c}", [heldout.files[i] for i in support[c]])
        rows = np.concatenate([genuine, strangers])
        preds = rt.classify([heldout.files[i] for i in rows])
        # The runtime scores what the module computed from the same graphs: its rates are the protocol's.
        scores = np.array([p.score for p in preds])
        np.testing.assert_allclose(scores, heldout.expected_scores(support, rows), atol=1e-3)
        assert [p.unknown for p in preds] == [p.score < threshold for p in preds]
        assert all(p.label == p.top_k[0][0] for p in preds if not p.unknown)
        accepted = np.mean([not p.unknown for p in preds[: len(genuine)]])
        rejected = np.mean([p.unknown for p in preds[len(genuine) :]])
        entry, bands = heldout.entry(shot), {rate: heldout.band(shot, rate) for rate in ("accept", "reject")}
        assert abs(accepted - entry["known_accept_rate"]) <= bands["accept"]
        assert abs(rejected - entry["unknown_reject_rate"]) <= bands["reject"]
        # Not vacuous: some scores lie between this number of shots' threshold and the other's (1 <-> 5), so the
        # score-by-score check above tells which one the runtime applied.
        other = threshold_for(heldout.open_set, 6 - shot)
        assert any(min(threshold, other) <= s < max(threshold, other) for s in scores)
        # An explicit threshold, and None, keep their meaning.
        few = [heldout.files[i] for i in strangers[:10]]
        assert not any(p.unknown for p in rt.classify(few, threshold=None))
        assert [p.unknown for p in rt.classify(few, threshold=-2.5)] == [p.score < -2.5 for p in rt.classify(few)]


@pytest.mark.slow
def test_cli_enroll_and_classify_json_at_one_shot_then_five(heldout, tmp_path):
    runner = CliRunner()
    common = ["--bundle", str(REFERENCE_BUNDLE), "--store", str(tmp_path / "g.db")]
    classes, support, genuine, strangers = heldout.episode(1, seed=7)
    for c in classes:
        result = runner.invoke(app, ["enroll", f"c{c}", *[str(heldout.files[i]) for i in support[c]], *common])
        assert result.exit_code == 0, result.output
    rows = np.concatenate([genuine, strangers])
    result = runner.invoke(app, ["classify", *[str(heldout.files[i]) for i in rows], *common, "--json"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    one = threshold_for(heldout.open_set, 1)
    assert [a["unknown"] for a in answers] == [a["score"] < one for a in answers]
    accepted = np.mean([not a["unknown"] for a in answers[: len(genuine)]])
    rejected = np.mean([a["unknown"] for a in answers[len(genuine) :]])
    assert abs(accepted - heldout.entry(1)["known_accept_rate"]) <= heldout.band(1, "accept")
    assert abs(rejected - heldout.entry(1)["unknown_reject_rate"]) <= heldout.band(1, "reject")

    # Two classes get four more drawings each: answers naming them now face the 5-shot threshold, the rest not.
    first = np.unique(heldout.data.drawers[support[classes[0]]])
    more = [d for d in TEST_DRAWERS if d not in first][:4]
    topped = {f"c{c}": [i for i in np.flatnonzero(heldout.data.labels == c) if heldout.data.drawers[i] in more]
              for c in classes[:2]}  # fmt: skip
    for label, extra in topped.items():
        result = runner.invoke(app, ["enroll", label, *[str(heldout.files[i]) for i in extra], *common])
        assert result.exit_code == 0 and "5 in the class" in result.stdout, result.output
    # Ask again about what those two classes answered before (and their drawings by the drawers left).
    used = set(more) | set(first.tolist())
    before = [a["top_k"][0]["label"] in topped for a in answers]
    rows = np.asarray([i for i, b in zip(rows, before) if b and heldout.data.drawers[i] not in used])
    answers = json.loads(runner.invoke(app, ["classify", *[str(heldout.files[i]) for i in rows], *common,
                                             "--json"]).stdout)  # fmt: skip
    five = threshold_for(heldout.open_set, 5)
    limit = [five if a["top_k"][0]["label"] in topped else one for a in answers]
    assert [a["unknown"] for a in answers] == [a["score"] < t for a, t in zip(answers, limit)]
    # Not vacuous: some answers scored between the two thresholds, so which one applies decides them.
    assert any(a["top_k"][0]["label"] in topped and one <= a["score"] < five for a in answers)
    assert runner.invoke(app, ["classify", str(heldout.files[strangers[0]]), *common, "--no-threshold",
                               "--json"]).stdout.count('"unknown": false') == 1  # fmt: skip


def test_a_bundle_from_before_curves_keeps_its_single_threshold(tmp_path):
    legacy = tmp_path / "bundle"
    shutil.copytree(REFERENCE_BUNDLE, legacy)
    single = bundle_io.load(legacy).manifest["open_set"]["threshold"]  # on the bundle's own scale of scores
    bundle_io.update_manifest(legacy, {"open_set": {"threshold": single, "known_accept_rate": 0.95}})
    drawings = [sorted((SAMPLES / "Korean" / f"character{n:02d}").glob("*.png")) for n in (1, 2, 3)]
    with Runtime(legacy) as rt:
        rt.enroll("one", drawings[0][:1])
        rt.enroll("five", drawings[1][:5])
        assert rt.threshold_for(1) == rt.threshold_for(5) == rt.default_threshold() == single
        preds = rt.classify(drawings[0][5:] + drawings[2])
        assert [p.unknown for p in preds] == [p.score < single for p in preds]
        assert any(p.unknown for p in preds) and not all(p.unknown for p in preds)
    bundle_io.update_manifest(legacy, {"open_set": None})  # no calibration at all: never "unknown"
    with Runtime(legacy) as rt:
        rt.enroll("one", drawings[0][:1])
        assert rt.threshold_for(1) is None and not any(p.unknown for p in rt.classify(drawings[2]))


# -- recalibrating a bundle without its checkpoint --------------------------------------------------------------
@pytest.mark.slow
def test_recalibrate_a_bundle_rewrites_only_its_open_set(heldout, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(REFERENCE_BUNDLE, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    zips = [str(p) for p in OMNIGLOT_ZIPS]
    for bad in (dict(groups=["Atlantean"]), dict(groups=[ENROLLED], drawers=[30])):
        with pytest.raises(CalibrationError):
            recalibrate_bundle(copy, zips, **bad)
        assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # a refused calibration changes nothing
    data = [arg for z in zips for arg in ("--data", z)]
    result = CliRunner().invoke(app, ["calibrate", str(copy), *data, "--groups", ENROLLED, "--drawers", "11-20",
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    after = {p.name: p.read_bytes() for p in copy.iterdir()}
    assert set(after) == set(before) and all(after[n] == before[n] for n in before if n != "manifest.json")
    manifest = bundle_io.load(copy).manifest  # the digest matches: the bundle verifies
    assert manifest["open_set"] == json.loads(result.stdout)
    old = json.loads(before["manifest.json"])
    assert {k for k in manifest if manifest[k] != old.get(k)} == {"open_set", "digest"}
    open_set = manifest["open_set"]
    assert open_set["data"] == {"groups": [ENROLLED], "classes": 24, "images": 240, "part": "given",
                                "drawers": TEST_DRAWERS}  # fmt: skip
    # The same curve from the module's embeddings of the same images: support images through the enrollment
    # graph (the query graph's embeddings give other thresholds).
    greek = np.flatnonzero(np.asarray(heldout.data.class_groups)[heldout.data.labels] == ENROLLED)
    mine = calibration_data(manifest, zips, [ENROLLED], TEST_DRAWERS)[0]
    assert np.array_equal(mine.pixels, heldout.data.pixels[greek])
    # (Each number of shots draws its own episodes, so 1 and 5 alone are the curve's entries for 1 and 5.)
    again = calibrate_curve(heldout.queries[greek], mine, "sqeuclidean", support_embeddings=heldout.support[greek],
                            shots=(1, 5))  # fmt: skip
    for expected in again["curve"]:
        recorded = next(e for e in open_set["curve"] if e["shots"] == expected["shots"])
        assert recorded["threshold"] == pytest.approx(expected["threshold"], abs=1e-4)
    wrong = calibrate_curve(heldout.queries[greek], mine, "sqeuclidean", shots=(1,))
    assert abs(wrong["curve"][0]["threshold"] - open_set["curve"][0]["threshold"]) > 1e-3


def test_metaedge_calibrate_refuses_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(tmp_path)])
    assert result.exit_code == 1 and "not a bundle" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["calibrate", str(REFERENCE_BUNDLE), "--drawers", "ten"])
    assert result.exit_code == 1 and "drawers 'ten'" in result.stderr
