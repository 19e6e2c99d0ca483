"""`effens distill` (issue #40): one network taught by a trained ensemble, written as a run of
one member that every command takes; consistent teaching; resume; unlabelled photos; inputs."""

import json
import shutil

import numpy as np
import pytest
import synth
import torch
import yaml
from safetensors.torch import load_file

from ensemble.cli import main
from ensemble.runfolder import MemberCheckpoint

EPOCHS = 3


def distil(teacher, out, *extra) -> int:
    return main(
        ["distill", str(teacher), "--out", str(out), "--set", f"distill.student.train.epochs={EPOCHS}", "-q", *extra]
    )


def weights(run):
    return load_file(str(run / "members/student/model.safetensors"))


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


# ---------------------------------------------------------------- the loss
def test_the_loss_is_the_labels_alone_at_weight_0_and_the_teacher_alone_for_unlabelled_images():
    from members.trainer import distillation_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=gen)
    teacher = torch.softmax(torch.randn(4, 3, generator=gen), dim=1)
    labels = torch.tensor([0, 2, 1, 0])
    ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(distillation_loss(logits, labels, teacher, 3.0, 0.0, 0.1), ce)
    # T = 1, weight 1: KL(teacher || student), zero where the student equals the teacher
    kl = (teacher * (teacher.log() - torch.log_softmax(logits, 1))).sum(1).mean()
    assert torch.allclose(distillation_loss(logits, labels, teacher, 1.0, 1.0), kl, atol=1e-6)
    assert distillation_loss(teacher.log(), labels, teacher, 2.5, 1.0).abs() < 1e-6
    # an unlabelled image (-1) carries only the teacher's term
    half = distillation_loss(logits, torch.tensor([-1, -1, -1, -1]), teacher, 1.0, 0.5)
    assert torch.allclose(half, 0.5 * kl, atol=1e-6)


# ---------------------------------------------------------------- the student follows the teacher
@pytest.fixture
def one_class_teacher(trained, tmp_path):
    """A copy of the trained run whose combiner also holds `always_stripes`: a strategy that
    answers `stripes` for every image, whatever the members say (the labels say otherwise)."""
    from ensemble.combining.strategies import STRATEGIES, Strategy, register

    @register
    class AlwaysStripes(Strategy):
        """Every image is `stripes`."""

        name = "always_stripes"

        def apply(self, proba):
            out = np.zeros(proba.shape[1:])
            out[:, sorted(synth.CLASSES).index("stripes")] = 1.0
            return out.argmax(1), out

    try:
        run = synth.copy_run(trained[1], tmp_path / "teacher")
        assert main(["fit-combiner", str(run), "-q"]) == 0
        yield run
    finally:
        STRATEGIES.remove("always_stripes")


def test_a_student_follows_a_teacher_that_always_answers_one_class(one_class_teacher, tiny_data, tmp_path):
    out = tmp_path / "student"
    assert (
        distil(
            one_class_teacher,
            out,
            "--strategy",
            "always_stripes",
            "--set",
            "distill.soft_weight=1",
            "--set",
            "distill.student.train.select=last",
            "--set",
            "distill.student.train.lr=0.01",
            "--set",
            "distill.student.train.epochs=8",
        )
        == 0
    )
    pred = tmp_path / "pred.json"
    assert main(["predict", str(out), str(tiny_data / "val"), "--out", str(pred), "-q"]) == 0
    rows = json.loads(pred.read_text())
    assert {r["prediction"] for r in rows} == {"stripes"}  # the labels are a third each
    doc = json.loads((out / "report/metrics.json").read_text())
    assert doc["distill"]["teacher"]["strategy"] == "always_stripes"
    assert doc["distill"]["splits"]["val"]["student"]["agreement"] == 1.0
    assert doc["distill"]["splits"]["val"]["teacher"]["macro_f1"] < 0.5


# ---------------------------------------------------------------- one run, every command
@pytest.fixture(scope="module")
def student(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "student"
    assert distil(trained[1], out) == 0
    return out


def test_the_student_is_a_run_of_one_member_with_its_teacher_recorded(student, trained):
    from ensemble.files import sha256_file
    from ensemble.runfolder import load_run

    ens = load_run(student)
    assert [fm.name for fm in ens.members_] == ["student"]
    meta = json.loads((student / "members/student/member.json").read_text())
    teacher = meta["distill"]["teacher"]
    assert teacher["run"] == str(trained[1].resolve()) and teacher["strategy"] == "soft"
    for name in ("a", "b", "c"):
        assert teacher["members"][name] == sha256_file(trained[1] / "members" / name / "model.safetensors")
    assert meta["distill"]["teacher_views"] == 0 and meta["distill"]["teaching"] == "ensemble"
    assert not list(student.rglob("*.pkl")) and not list(student.rglob("*.pt"))
    from ensemble.config import DistillConfig, load_distill

    again = load_distill(student / "config.yaml", DistillConfig())  # the card's command: --config its config.yaml
    assert (again.strategy, again.teacher_views, again.student) == ("soft", 0, {"train": {"epochs": EPOCHS}})
    report = (student / "report/report.md").read_text()
    assert "## Distillation" in report and "in-sample" in report and "images/s" in report
    # one network: the default strategy alone, not five copies of the student
    assert "One network" in report and "### stacking" not in report and "### soft" in report
    assert not list((student / "report").glob("confusion_hard_*.png"))
    assert set(json.loads((student / "report/metrics.json").read_text())["strategies"]) == {"soft"}
    doc = json.loads((student / "report/metrics.json").read_text())["distill"]
    for who in ("student", "teacher", "best_member"):
        m = doc["splits"]["test"][who]
        assert m["interval"][0] <= m["macro_f1"] <= m["interval"][1] and 0 <= m["ece"] <= 1
        assert set(m["agreement_per_class"]) == set(synth.CLASSES)
    assert doc["speed"]["student_images_per_s"] > 0 and doc["speed"]["teacher_images_per_s"] > 0


def test_predict_evaluate_serve_export_and_audit_take_the_student(student, tiny_data, tmp_path):
    pytest.importorskip("fastapi")
    ort = pytest.importorskip("onnxruntime")
    paths = sorted((tiny_data / "test").rglob("*.png"))
    pred = tmp_path / "pred.json"
    assert main(["predict", str(student), *map(str, paths), "--out", str(pred), "-q"]) == 0
    want = json.loads(pred.read_text())
    labels = [p.parent.name for p in paths]
    assert main(["evaluate", str(student), str(tiny_data / "test"), "--out", str(tmp_path / "eval"), "-q"]) == 0
    evaluated = json.loads((tmp_path / "eval/metrics.json").read_text())
    got = evaluated["members"]["student"]
    split = next(iter(got))
    assert got[split]["accuracy"] == pytest.approx(np.mean([w["prediction"] == lab for w, lab in zip(want, labels)]))

    server = synth.Server(student)
    try:
        code, body = synth.http_post(server.url + "/v1/predict", [("files", p.name, p.read_bytes()) for p in paths[:4]])
    finally:
        server.stop()
    assert code == 200, body
    for w, g in zip(want, body["results"]):
        assert g["prediction"] == w["prediction"]
        np.testing.assert_allclose([g["proba"][c] for c in w["proba"]], list(w["proba"].values()), atol=1e-6)

    assert main(["export", str(student), "--format", "onnx", "--out", str(tmp_path / "onnx"), "-q"]) == 0
    from ensemble.runfolder import load_run
    from members.transforms import eval_tensor, normalize

    ens = load_run(student)
    fm = ens.members_[0]
    from ensemble.images import decode_all

    imgs, _ = decode_all([str(p) for p in paths], fm.inputs.resize_size)
    x = normalize(eval_tensor(imgs, fm.inputs), fm.inputs).contiguous().numpy()
    for graph in ("student.onnx", "ensemble.onnx"):
        sess = ort.InferenceSession(str(tmp_path / "onnx" / graph), providers=["CPUExecutionProvider"])
        proba = sess.run(None, {"image": x})[0]
        np.testing.assert_allclose(proba, [list(w["proba"].values()) for w in want], atol=1e-4)
        assert [ens.classes_[i] for i in proba.argmax(1)] == [w["prediction"] for w in want]

    assert main(["audit", str(student), "--out", str(tmp_path / "audit"), "--no-features", "-q"]) == 0


# ---------------------------------------------------------------- consistent teaching, resume
@pytest.fixture(scope="module")
def straight(trained, tmp_path_factory):
    """Students taught on the fly (recording what the teacher said of each batch) and from 3
    cached views (one per epoch), each trained without interruption."""
    from ensemble.distill import EnsembleTeacher

    root = tmp_path_factory.mktemp("straight")
    said = []
    real = EnsembleTeacher.__call__

    def recording(self, x, index, epoch):
        proba = real(self, x, index, epoch)
        said.append((epoch, index.numpy().copy(), proba.numpy().copy()))
        return proba

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EnsembleTeacher, "__call__", recording)
        assert distil(trained[1], root / "views0") == 0
    assert distil(trained[1], root / "views3", "--set", f"distill.teacher_views={EPOCHS}") == 0
    return {0: root / "views0", EPOCHS: root / "views3"}, said


def test_cached_views_are_the_views_the_student_trains_on(straight):
    """Consistent teaching: the teacher's labels cached for view v of an image are what it says,
    on the fly, of that image in the batch of epoch v."""
    runs, said = straight
    cache = np.load(runs[EPOCHS] / "cache/teacher/proba.npy")
    assert cache.shape[:2] == (EPOCHS, 48) and {e for e, _, _ in said} == set(range(EPOCHS))
    for epoch, index, proba in said:
        np.testing.assert_allclose(cache[epoch, index], proba, atol=1e-5)
    assert not np.allclose(cache[0], cache[1], atol=1e-3)  # another view each epoch: other labels


@pytest.mark.parametrize("views", [0, EPOCHS])
def test_resume_after_a_kill_gives_identical_weights(straight, trained, tmp_path, monkeypatch, caplog, views):
    class Killed(BaseException):
        pass

    real_save = MemberCheckpoint.save

    def save_then_die(self, tensors, doc):
        real_save(self, tensors, doc)
        if doc["epoch"] == 2:
            raise Killed("simulated kill after epoch 2's checkpoint")

    out = tmp_path / "resumed"
    extra = ["--set", f"distill.teacher_views={views}"]
    monkeypatch.setattr(MemberCheckpoint, "save", save_then_die)
    with pytest.raises(Killed):
        distil(trained[1], out, *extra)
    assert json.loads((out / "members/student/checkpoint.json").read_text())["epoch"] == 2
    monkeypatch.setattr(MemberCheckpoint, "save", real_save)
    caplog.set_level("INFO")
    assert (
        main(["distill", str(trained[1]), "--out", str(out), "--set", f"distill.student.train.epochs={EPOCHS}", *extra])
        == 0
    )
    assert "resuming after epoch 2/3" in caplog.text
    assert "teacher: labelling" not in caplog.text  # the cached views come back from the folder
    a, b = weights(straight[0][views]), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_oob_teaching_uses_only_the_members_that_left_an_image_out(trained, tmp_path):
    out = tmp_path / "oob"
    assert distil(trained[1], out, "--set", "distill.teaching=oob", "--set", "distill.student.train.epochs=1") == 0
    doc = json.loads((out / "report/metrics.json").read_text())["distill"]
    assert doc["settings"]["teaching"] == "oob"
    assert doc["oob"]["taught_by_oob"] + doc["oob"]["taught_by_all"] == 48 and doc["oob"]["taught_by_oob"] > 0
    assert "OOB vote" in (out / "report/report.md").read_text()


# ---------------------------------------------------------------- unlabelled photos
def test_unlabelled_photos_that_copy_val_or_test_are_left_out_with_a_count(trained, tiny_data, tmp_path, caplog):
    extra = tmp_path / "extra"
    synth.make_folder(tmp_path / "new", 1, seed=9)  # 3 new photos, one per class folder
    for p in (tmp_path / "new").rglob("*.png"):
        (extra / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, extra / "sub" / f"new_{p.name}")
    val, test = sorted((tiny_data / "val").rglob("*.png")), sorted((tiny_data / "test").rglob("*.png"))
    shutil.copy(val[0], extra / "v0.png")
    shutil.copy(val[5], extra / "v5.png")
    shutil.copy(test[3], extra / "t3.png")
    shutil.copy(extra / "v0.png", extra / "sub" / "v0_again.png")
    (extra / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "student"
    caplog.set_level("WARNING")
    assert distil(trained[1], out, "--unlabelled", str(extra), "--set", "distill.student.train.epochs=1") == 0
    u = json.loads((out / "report/metrics.json").read_text())["distill"]["unlabelled"]
    assert u["found"] == 8 and u["used"] == 3
    assert u["left_out"] == {"duplicate_of_val": 3, "duplicate_of_test": 1, "unreadable": 1}
    assert "left out 3 photo(s): duplicate of val" in caplog.text
    assert "3 taught by the teacher alone" in (out / "report/report.md").read_text()
    assert json.loads((out / "members/student/member.json").read_text())["distill"]["n_unlabelled"] == 3


def test_init_member_starts_the_student_from_that_members_trained_weights(trained, tmp_path):
    from ensemble.files import sha256_file

    member = trained[1] / "members/b/model.safetensors"
    out = tmp_path / "warm"
    # a learning rate too small to move a weight: what the student holds is where it started
    assert distil(trained[1], out, "--set", "distill.init=b", "--set", "distill.student.train.lr=1e-12") == 0
    start, got = load_file(str(member)), weights(out)
    assert torch.allclose(got["conv_stem.weight"], start["conv_stem.weight"], atol=1e-7)
    assert torch.allclose(got["classifier.weight"], start["classifier.weight"], atol=1e-7)  # the head too
    fresh = load_file(str(trained[1] / "members/a/model.safetensors"))["conv_stem.weight"]
    assert not torch.allclose(got["conv_stem.weight"], fresh, atol=1e-3)  # b's weights, not a's
    meta = json.loads((out / "members/student/member.json").read_text())
    assert meta["distill"]["start"] == {"member": "b", "sha256": sha256_file(member)}
    assert "started from the trained weights of member b" in (out / "report/report.md").read_text()
    assert meta["weights"] == "none"  # the student's weights source stays the member's own (the audit reads it)
    from ensemble.distill import plan_distill

    plan = plan_distill(str(trained[1]), overrides=["distill.init=member"])  # the member it is based on: a
    assert (
        plan.start == (trained[1] / "members/a/model.safetensors").resolve() and plan.record["start"]["member"] == "a"
    )
    assert "start" not in plan_distill(str(trained[1])).record  # the default: no start, as before `init` existed


def test_a_student_named_after_a_member_takes_its_settings_and_keeps_its_trained_head(tiny_data):
    from ensemble.config import DistillConfig, config_from_dict
    from ensemble.distill import student_base, student_spec

    raw = synth.tiny_config(tiny_data)
    raw["members"][1].update(image_size=48)
    for m in raw["members"]:
        m["train"].update(lp_epochs=3, wise_alpha=0.5)
    cfg = config_from_dict(raw)
    smallest = cfg.members[0]
    assert student_base(cfg, "b", smallest).image_size == 48  # `init: b`: b's architecture and inputs
    assert student_base(cfg, "member", smallest) is smallest and student_base(cfg, "weights", smallest) is smallest

    def probe(init, **train):
        return student_spec(smallest, DistillConfig(init=init, student={"train": train} if train else {}), "x").train

    assert probe("weights").lp_epochs == 3  # from its weights source: LP-FT as the member had it
    assert probe("member").lp_epochs == 0  # from a trained head: no probe to replace it (nor WiSE-FT with one)
    assert probe("member").wise_alpha == 1.0 and probe("weights").wise_alpha == 0.5
    assert probe("b", lp_epochs=2).lp_epochs == 2  # unless the student asks for one


# ---------------------------------------------------------------- bad inputs
def _unfinished(run, tmp_path):
    copy = synth.copy_run(run, tmp_path / "unfinished")
    shutil.rmtree(copy / "combiner")
    return copy


def _photos(tmp_path):
    folder = tmp_path / "photos"
    synth.make_folder(folder, 1, seed=5)
    return folder


def _config_with(tmp_path, doc) -> str:
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _sets(run, tmp_path, *items) -> list[str]:
    """`RUN --out TMP/s --set ITEM ...`"""
    return [str(run), "--out", str(tmp_path / "s"), *(arg for item in items for arg in ("--set", item))]


BAD = {
    "no combiner": (lambda run, tmp: [str(_unfinished(run, tmp)), "--out", str(tmp / "s")], "has no trained combiner"),
    "input size": (
        lambda run, tmp: _sets(run, tmp, "distill.student.model=test_vit", "distill.student.image_size=40"),
        "`distill.student.image_size`: test_vit cannot take 40 px inputs",
    ),
    "out inside the run": (
        lambda run, tmp: [str(run), "--out", str(run / "student")],
        "is inside the effens run folder",
    ),
    "out is the run": (lambda run, tmp: [str(run), "--out", str(run)], "is also an input of this command"),
    "out inside unlabelled": (
        lambda run, tmp: [str(run), "--unlabelled", str(_photos(tmp)), "--out", str(tmp / "photos" / "s")],
        "is inside the input folder",
    ),
    "out is the config": (
        lambda run, tmp: [str(run), "--config", _config_with(tmp, {"distill": {}}), "--out", str(tmp / "distill.yaml")],
        "is also an input",
    ),
    "unknown key": (
        lambda run, tmp: [
            str(run),
            "--config",
            _config_with(tmp, {"distill": {"temprature": 3}}),
            "--out",
            str(tmp / "s"),
        ],
        "unknown key `distill.temprature` (did you mean `distill.temperature`?)",
    ),
    "unknown top key": (
        lambda run, tmp: [str(run), "--config", _config_with(tmp, {"distil": {}}), "--out", str(tmp / "s")],
        "distill.yaml: unknown key `distil` (did you mean `distill`?)",
    ),
    "student key": (
        lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--set", "distill.student.bagging.ratio=0.5"],
        "`distill.student.bagging`: a student trains on every training image once",
    ),
    "bad value": (
        lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--set", "distill.temperature=-1"],
        "--set distill.temperature=-1: `distill.temperature` must be in (0, 100]; got -1",
    ),
    "bad train value": (
        lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--set", "distill.student.train.lr=0"],
        "--set distill.student.train.lr=0: `distill.student.train.lr` must be in (0, inf); got 0",
    ),
    "not a distill key": (
        lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--set", "seed=3"],
        "`effens distill` takes `distill.*` keys",
    ),
    "strategy": (lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--strategy", "sotf"], "did you mean 'soft'"),
    "init names no member": (
        lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--set", "distill.init=d"],
        "`distill.init`: 'd' is not a member of",
    ),
    "init of another architecture": (
        lambda run, tmp: _sets(run, tmp, "distill.student.model=test_vit", "distill.init=member"),
        "`distill.init`: member a is test_efficientnet, the student test_vit",
    ),
    "unlabelled": (
        lambda run, tmp: [str(run), "--out", str(tmp / "s"), "--unlabelled", str(tmp / "nowhere")],
        "no such folder or CSV file",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_input_is_one_line_and_exit_2_before_any_work(trained, tmp_path, caplog, case):
    args, message = BAD[case]
    argv = args(trained[1], tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["distill", *argv]) == 2
    lines = errors(caplog)
    assert len(lines) == 1 and "\n" not in lines[0] and message in lines[0], lines
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not (trained[1] / "student").exists()


def test_a_run_that_defaults_to_hard_voting_teaches_by_soft_unless_asked(trained, tmp_path, caplog):
    # hard voting answers vote shares (0, 1/3, 2/3, 1), not probabilities: a poor teacher
    from ensemble.cli import main
    from ensemble.distill import plan_distill

    run = synth.copy_run(trained[1], tmp_path / "hard")
    assert main(["fit-combiner", str(run), "--set", "combiner.strategy=hard"]) == 0
    with caplog.at_level("INFO"):
        assert plan_distill(str(run)).strategy == "soft"
    assert "gives vote shares, not probabilities: teaching by soft" in caplog.text
    assert plan_distill(str(run), strategy="hard").strategy == "hard"  # asked for: as asked
