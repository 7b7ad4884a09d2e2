"""Distillation (metaedge/distill.py): its losses, its two kinds of teacher, and the trainer's --teacher runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Interrupted, assert_same_last_weights, interrupt_after

from metaedge import checkpoint as ckpt
from metaedge.data import open_dataset
from metaedge.distill import LOSSES, Distiller, TeacherError, load_teacher
from metaedge.errors import CheckpointError
from metaedge.evaluate import to_tensor
from metaedge.train import TrainConfig, train


def episode_images(run_dir, n_support: int = 10, n_query: int = 20):
    """Training images of the run at its preprocessing: (support (S, C, H, W), labels (S,), query (Q, C, H, W))."""
    meta = ckpt.read_meta(ckpt.resolve(run_dir))
    data = open_dataset(meta["data"]["roots"]).subset(meta["split"]["train"][:1]).load(ckpt.load(run_dir).preprocess)
    # One image of each of the first classes as support, then further images of the same classes as queries.
    firsts = [int((data.labels == c).nonzero()[0][0]) for c in range(n_support)]
    later = [int(i) for c in range(n_support) for i in (data.labels == c).nonzero()[0][1:3]][:n_query]
    x = to_tensor(data.pixels, data.spec)
    return x[firsts], torch.arange(n_support), x[later]


def student_outputs(method, support, labels, query, way):
    zs, zq = method.embed_episode(support, query)
    return zs, zq, method.logits_from_embeddings(zs, labels, zq, way)


def test_loss_is_zero_when_the_student_is_the_teacher_and_not_otherwise(tiny_run_dir):
    support, labels, query = episode_images(tiny_run_dir)
    teacher = load_teacher(tiny_run_dir)
    student = ckpt.load(tiny_run_dir).method  # the same network, eval mode as the teacher runs
    fresh = ckpt.build_method(ckpt.read_meta(ckpt.resolve(tiny_run_dir)))
    fresh.eval()
    targets = Distiller(teacher).targets(torch.cat([support, query]))
    for name in LOSSES:
        distiller = Distiller(teacher, name, weight=1.0, temperature=2.0)
        with torch.no_grad():
            same = distiller.loss(*student_outputs(student, support, labels, query, 10), targets, labels, 10)
            other = distiller.loss(*student_outputs(fresh, support, labels, query, 10), targets, labels, 10)
        assert abs(float(same)) < 1e-5, (name, float(same))
        assert float(other) > 1e-3, (name, float(other))


@pytest.mark.parametrize("name", LOSSES)
def test_the_loss_decreases_as_a_student_learns_it(tiny_run_dir, name):
    support, labels, query = episode_images(tiny_run_dir)
    distiller = Distiller(load_teacher(tiny_run_dir), name, weight=1.0, temperature=2.0)
    targets = distiller.targets(torch.cat([support, query]))
    torch.manual_seed(0)
    student = ckpt.build_method({"algorithm": {"name": "protonet", "config": {"metric": "sqeuclidean"}},
                                 "backbone": {"name": "conv4", "kwargs": {"in_channels": 1, "width": 8}}})  # fmt: skip
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = distiller.loss(*student_outputs(student, support, labels, query, 10), targets, labels, 10)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_an_onnx_teacher_and_a_run_teacher_give_the_same_targets(tiny_run_dir, tiny_bundle):
    support, labels, query = episode_images(tiny_run_dir)
    images = torch.cat([support, query])
    run, bundle = load_teacher(tiny_run_dir), load_teacher(tiny_bundle)
    assert (run.kind, bundle.kind) == ("run", "bundle") and run.spec == bundle.spec
    a, b = run.embed(images), bundle.embed(images)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    ns = len(support)
    torch.testing.assert_close(bundle.logits(b[:ns], labels, b[ns:], 10), run.logits(a[:ns], labels, a[ns:], 10),
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def small(omniglot_zips, out, **kw) -> TrainConfig:
    base = dict(
        data=[str(p) for p in omniglot_zips], out=str(out), way=10, shot=1, query=3, episodes=20, holdout_groups=2,
        val_groups=1, val_every=10, val_episodes=10, width=16, seed=0, augment=True,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_a_distilled_run_at_another_size_than_its_onnx_teacher_resumes_exactly(omniglot_zips, tiny_bundle, tmp_path):
    # The student reads 32 px, the teacher (a bundle, ONNX Runtime) 28 px: both get the same warped images.
    kw = dict(image_size=32, teacher=str(tiny_bundle), distill="kl+relational", distill_temperature=2.0)
    train(small(omniglot_zips, tmp_path / "full", **kw))
    half = small(omniglot_zips, tmp_path / "half", **kw)
    with pytest.raises(Interrupted):
        train(half, on_step=interrupt_after(10))
    train(half, resume=True)
    assert_same_last_weights(tmp_path / "full", tmp_path / "half")
    meta = ckpt.read_meta(tmp_path / "half" / ckpt.LAST)
    assert meta["teacher"]["kind"] == "bundle" and meta["teacher"]["preprocess"]["size"] == 28
    assert meta["train_config"]["teacher"] == str(tiny_bundle)
    rows = [json.loads(line) for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert all(r["distill_loss"] > 0 for r in rows) and len(rows) == 2


def test_the_teacher_sees_the_warps_the_student_trains_on_at_its_own_size(
    omniglot_zips, tiny_bundle, tmp_path, monkeypatch
):
    # Student at 56 px, teacher (the tiny bundle) at 28: the teacher's images must be the student's, warped alike.
    from metaedge.methods.protonet import ProtoNet

    seen = {}
    real_targets, real_embed = Distiller.targets, ProtoNet.embed_episode

    def targets(self, images):
        seen["teacher"] = images
        return real_targets(self, images)

    def embed_episode(self, support, query):
        seen["student"] = torch.cat([support, query]).detach()
        return real_embed(self, support, query)

    monkeypatch.setattr(Distiller, "targets", targets)
    monkeypatch.setattr(ProtoNet, "embed_episode", embed_episode)
    train(small(omniglot_zips, tmp_path / "run", episodes=1, val_every=1, image_size=56, teacher=str(tiny_bundle)))
    # The teacher's targets are asked of the images at each preprocessing the teachers read: here 28 px.
    student, teacher = seen["student"], next(x for spec, x in seen["teacher"].items() if spec.size == 28)
    assert teacher.shape[-1] == 28 and student.shape[-1] == 56 and len(teacher) == len(student)
    # Box-downsampled, the student's warped images are the teacher's up to interpolation; another image's warp
    # (the episode's order shifted by one) is far from it.
    down = torch.nn.functional.avg_pool2d(student, 2)
    same = torch.nn.functional.cosine_similarity(down.flatten(1), teacher.flatten(1)).min()
    shifted = torch.nn.functional.cosine_similarity(down.roll(1, 0).flatten(1), teacher.flatten(1)).mean()
    assert same > 0.9 > shifted + 0.2, (float(same), float(shifted))


def test_the_teacher_changes_what_is_learnt(omniglot_zips, tiny_run_dir, tmp_path):
    train(small(omniglot_zips, tmp_path / "plain", episodes=4, val_every=4, augment=False))
    train(small(omniglot_zips, tmp_path / "taught", episodes=4, val_every=4, augment=False, teacher=str(tiny_run_dir)))
    a = ckpt.load(tmp_path / "plain", which=ckpt.LAST).method.state_dict()
    b = ckpt.load(tmp_path / "taught", which=ckpt.LAST).method.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def test_resume_refuses_another_teacher_and_a_teacher_for_an_untaught_run(omniglot_zips, tiny_run_dir, tmp_path):
    other = tmp_path / "other-teacher"
    train(small(omniglot_zips, other, episodes=2, val_every=2, seed=5, split_seed=0))
    run = small(omniglot_zips, tmp_path / "run", episodes=4, val_every=2, teacher=str(tiny_run_dir))
    with pytest.raises(Interrupted):
        train(run, on_step=interrupt_after(2))
    before = (tmp_path / "run" / ckpt.LAST).read_bytes()
    with pytest.raises(TeacherError, match="resume with its own teacher") as e:
        train(small(omniglot_zips, tmp_path / "run", episodes=4, teacher=str(other)), resume=True)
    assert "\n" not in str(e.value)
    assert (tmp_path / "run" / ckpt.LAST).read_bytes() == before
    train(small(omniglot_zips, tmp_path / "run", episodes=4), resume=True)  # no --teacher: the run's own
    assert ckpt.read_meta(tmp_path / "run" / ckpt.LAST)["episode"] == 4
    with pytest.raises(CheckpointError, match="without a teacher"):
        train(small(omniglot_zips, other, episodes=4, teacher=str(tiny_run_dir)), resume=True)


def test_refuses_a_teacher_of_other_channels_or_of_the_held_out_groups(omniglot_zips, tiny_run_dir, tmp_path):
    rgb = {"channels": 3, "invert": True, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    colour = tmp_path / "colour-teacher"
    train(small(omniglot_zips, colour, episodes=2, val_every=2, preprocess=rgb))
    with pytest.raises(TeacherError, match="3-channel images, the student 1-channel") as e:
        train(small(omniglot_zips, tmp_path / "a", teacher=str(colour)))
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()
    # Another split seed holds out other alphabets, some of which the teacher trained on.
    test_groups = set(ckpt.read_meta(ckpt.resolve(tiny_run_dir))["split"]["test"])
    seed = next(s for s in range(1, 50) if _test_groups(omniglot_zips, s) - test_groups)
    with pytest.raises(TeacherError, match="which this run holds out for testing"):
        train(small(omniglot_zips, tmp_path / "b", split_seed=seed, teacher=str(tiny_run_dir)))
    assert not (tmp_path / "b").exists()


def _test_groups(omniglot_zips, seed: int) -> set[str]:
    from metaedge.data import split_groups

    return set(split_groups(open_dataset([str(p) for p in omniglot_zips]).split_units(), 2, 1, seed).test)


def test_the_cli_refuses_a_teacher_that_is_no_run_in_one_line(omniglot_zips, tmp_path):
    from typer.testing import CliRunner

    from metaedge.cli import app

    data = [a for p in omniglot_zips for a in ("--data", str(p))]
    (tmp_path / "not-a-run").mkdir()
    result = CliRunner().invoke(app, ["train", *data, "--out", str(tmp_path / "run"), "--episodes", "2",
                                      "--teacher", str(tmp_path / "not-a-run")])  # fmt: skip
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert message.count("\n") == 0 and "--teacher" in message and "no such checkpoint" in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_ranks_distil_as_one_process(omniglot_zips, tiny_run_dir, tmp_path):
    # Under torchrun each rank runs the teacher on its own tasks; together they make the one-process update.
    from test_distributed import parameter_differences, torchrun, train_single_threaded

    args = dict(way=5, query=3, episodes=3, width=16, val_groups=0, val_every=3, meta_batch=4, seed=3, split_seed=0,
                teacher=str(tiny_run_dir), distill="kl+relational")  # fmt: skip
    train_single_threaded(TrainConfig(data=[str(p) for p in omniglot_zips], out=str(tmp_path / "one"), **args))
    cli = [arg for p in omniglot_zips for arg in ("--data", str(p))] + [
        "--out", str(tmp_path / "two"), "--way", "5", "--query", "3", "--episodes", "3", "--width", "16",
        "--val-groups", "0", "--val-every", "3", "--meta-batch", "4", "--seed", "3", "--split-seed", "0",
        "--teacher", str(tiny_run_dir), "--distill", "kl+relational", "--json", "--overwrite",
    ]  # fmt: skip
    done = torchrun(cli)
    assert done.returncode == 0, done.stderr[-3000:]
    diff = parameter_differences(tmp_path / "one", tmp_path / "two")
    # As in test_distributed: summation order differs in the last bits, which Adam may turn into a full step.
    assert (diff <= 1e-5).float().mean() >= 0.995, diff.max()
    assert ckpt.read_meta(tmp_path / "two" / ckpt.LAST)["teacher"]["sha256"] == load_teacher(tiny_run_dir).sha256


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """Two squared-euclidean teachers of the student's split: a Conv4 at 28 px and one at 32 px."""
    from conftest import OMNIGLOT, OMNIGLOT_ZIPS

    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip(f"the shared Omniglot data is not at {OMNIGLOT}")
    root = tmp_path_factory.mktemp("teachers")
    for name, size, seed in (("a28", 28, 1), ("b32", 32, 2)):
        train(small(OMNIGLOT_ZIPS, root / name, episodes=6, val_every=6, image_size=size, seed=seed, split_seed=0))
    return root / "a28", root / "b32"


def test_a_teacher_beside_itself_teaches_what_it_teaches_alone(two_teachers, tiny_run_dir):
    from metaedge.distill import combine_teachers

    teacher = load_teacher(two_teachers[0])
    support, labels, query = episode_images(two_teachers[0])
    images = torch.cat([support, query])
    pair = combine_teachers([teacher, load_teacher(two_teachers[0])], {teacher.spec: images})
    assert pair.weights == pytest.approx([2**-0.5, 2**-0.5])  # same spread: the same part, weighed alike
    alone = Distiller(teacher, "kl+relational").targets(images)
    both = Distiller(pair, "kl+relational").targets({teacher.spec: images})
    torch.testing.assert_close(both, torch.cat([alone, alone], 1) * 2**-0.5)
    ns = len(support)  # the distances add: the pair's logits are the lone teacher's
    torch.testing.assert_close(pair.logits(both[:ns], labels, both[ns:], 10),
                               teacher.logits(alone[:ns], labels, alone[ns:], 10), rtol=1e-5, atol=1e-4)  # fmt: skip
    with pytest.raises(TeacherError, match="only squared-euclidean teachers"):
        combine_teachers([teacher, load_teacher(tiny_run_dir)], {teacher.spec: images})


def test_teachers_of_other_sizes_are_weighed_to_one_spread(omniglot_zips, two_teachers):
    from metaedge.distill import combine_teachers

    parts = [load_teacher(t) for t in two_teachers]
    meta = ckpt.read_meta(ckpt.resolve(two_teachers[0]))
    train_set = open_dataset(meta["data"]["roots"]).subset(meta["split"]["train"])
    images = {t.spec: to_tensor(train_set.load(t.spec).pixels, t.spec) for t in parts}
    team = combine_teachers(parts, images)
    assert [s.size for s in team.specs] == [28, 32]
    z = team.embed(images)
    d0 = parts[0].embed(images[parts[0].spec]).shape[1]

    def spread(x):
        return float(((x - x.mean(0)) ** 2).sum(1).mean().sqrt())

    first = spread(z[:, :d0]) * 2**0.5  # the first part's own spread, before the 1/sqrt(2)
    assert spread(z[:, :d0]) == pytest.approx(spread(z[:, d0:]), rel=1e-4)
    assert spread(z) == pytest.approx(first, rel=1e-4)
    with pytest.raises(TeacherError, match="2 preprocessings"):
        team.embed(images[parts[0].spec])


def test_two_teachers_at_their_own_sizes_teach_a_run_that_resumes_exactly(omniglot_zips, two_teachers, tmp_path):
    # The student reads 32 px as the second teacher does (it is given the student's own warped images); the first
    # teacher reads 28 px (its own copy, warped by the same draws).
    kw = dict(image_size=32, teacher=[str(t) for t in two_teachers], distill="kl+relational", split_seed=0,
              episodes=12, val_every=6)  # fmt: skip
    train(small(omniglot_zips, tmp_path / "full", **kw))
    half = small(omniglot_zips, tmp_path / "half", **kw)
    with pytest.raises(Interrupted):
        train(half, on_step=interrupt_after(6))
    before = (tmp_path / "half" / ckpt.LAST).read_bytes()
    # The same teachers in another order are other targets: refused, the run left as it was.
    with pytest.raises(TeacherError, match="resume with its own teacher"):
        train(small(omniglot_zips, tmp_path / "half", **{**kw, "teacher": kw["teacher"][::-1]}), resume=True)
    assert (tmp_path / "half" / ckpt.LAST).read_bytes() == before
    train(half, resume=True)
    assert_same_last_weights(tmp_path / "full", tmp_path / "half")
    recorded = ckpt.read_meta(tmp_path / "half" / ckpt.LAST)["teacher"]
    assert recorded["kind"] == "teachers" and [p["preprocess"]["size"] for p in recorded["parts"]] == [28, 32]
    assert len(recorded["weights"]) == 2 and all(w > 0 for w in recorded["weights"])
    # One teacher alone teaches another student: the second teacher changes what is learnt.
    train(small(omniglot_zips, tmp_path / "one", **{**kw, "teacher": kw["teacher"][0]}))
    a = ckpt.load(tmp_path / "one", which=ckpt.LAST).method.state_dict()
    b = ckpt.load(tmp_path / "full", which=ckpt.LAST).method.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


def test_the_cli_takes_several_teachers(omniglot_zips, two_teachers, tmp_path):
    from typer.testing import CliRunner

    from metaedge.cli import app

    data = [a for p in omniglot_zips for a in ("--data", str(p))]
    teachers = [a for t in two_teachers for a in ("--teacher", str(t))]
    result = CliRunner().invoke(app, ["train", *data, "--out", str(tmp_path / "run"), "--episodes", "2", "--way", "5",
                                      "--query", "2", "--width", "16", "--val-every", "2", "--split-seed", "0",
                                      *teachers, "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = ckpt.read_meta(tmp_path / "run" / ckpt.LAST)
    assert meta["train_config"]["teacher"] == [str(t) for t in two_teachers]
    assert meta["teacher"]["source"] == " + ".join(str(t) for t in two_teachers)
