"""Plugins (issue #24, item 3): a user's module named under `plugins:` registers a
strategy, a view, a runtime, a weights source and a report figure that train, the report,
predict and evaluate then use, with no edit to the package. Run in a fresh interpreter:
what a plugin registers stays registered for the rest of a process."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import synth
import yaml

PLUGIN = textwrap.dedent('''
    import dataclasses

    import numpy as np

    from ensemble.reporting.markdown import Attachment, report_section, split_figure
    from ensemble.schema import field, interval
    from ensemble.combining.strategies import Strategy, register
    from members.runtimes import TorchRuntime
    from members.runtimes import register as register_runtime
    from members.views import view
    from members.weights import WeightsSource, register_source

    SEEN = []


    @dataclasses.dataclass
    class GeomeanSettings:
        sharpness: float = field(1.0, check=interval(0, None, low_open=True),
                                 doc="exponent on the geometric mean before normalising")


    @register
    class GeometricMean(Strategy):
        """The members' geometric mean probability per class (a product of experts)."""
        name = "geomean"
        settings_schema = GeomeanSettings

        def __init__(self, settings=None, seed=0):
            super().__init__(settings, seed)
            self.sharpness_ = None if settings is None else float(settings.geomean.sharpness)

        def apply(self, proba):
            logp = np.log(np.clip(proba, 1e-12, 1.0)).mean(axis=0) * self.sharpness_
            p = np.exp(logp - logp.max(axis=1, keepdims=True))
            return p.argmax(axis=1), p / p.sum(axis=1, keepdims=True)

        def state(self):
            return {"sharpness": self.sharpness_}, {}

        def _load(self, doc, arrays):
            self.sharpness_ = doc["sharpness"]

        def graph_head(self):
            import torch

            class Head(torch.nn.Module):
                def __init__(self, k):
                    super().__init__()
                    self.k = k

                def forward(self, stacked):
                    return (torch.log(stacked.clamp(1e-12, 1.0)).mean(dim=0) * self.k).softmax(dim=1)

            return Head(self.sharpness_)


    @view
    def toy_centre(arr, inputs):
        """The centre half of the photo, resized to the square input."""
        from PIL import Image
        s, (h, w) = inputs.image_size, arr.shape[:2]
        return np.array(Image.fromarray(arr[h // 4:h - h // 4, w // 4:w - w // 4]).resize((s, s)), dtype=np.uint8)


    @view(tta_only=True)
    def top_half(arr, inputs):
        """The upper half of the photo, resized to the square input."""
        from PIL import Image
        s = inputs.image_size
        h = max(1, arr.shape[0] // 2)
        return np.array(Image.fromarray(arr[:h]).resize((s, s)), dtype=np.uint8)


    @register_runtime("toyrt")
    class CountingTorch(TorchRuntime):
        """Eager torch that counts its batches in an environment-named file."""
        def run(self, x):
            import os
            with open(os.environ["TOYRT_LOG"], "a") as fh:
                fh.write(f"{len(x)}\\n")
            return super().run(x)


    @register_source
    class ToyWeights(WeightsSource):
        """`toy://seed`: random initialisation, recorded as the toy source."""
        name = "toy"
        prefix = "toy://"

        def load(self, model, value):
            return value


    @split_figure
    def toy_class_counts(view):
        counts = np.bincount(view.y, minlength=len(view.classes)).tolist()
        text = f"toy figure {view.split}: " + ", ".join(f"{c}={n}" for c, n in zip(view.classes, counts))
        return Attachment(f"toy_{view.split}.txt", text, text)


    @report_section
    def toy_section(doc):
        return ["## Toy section", "", f"The toy plugin saw strategy **{doc['strategy']}**.", ""]
''')


def _effens(*argv, env=None, cwd=None):
    done = subprocess.run(
        [sys.executable, "-m", "ensemble", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    return done.returncode, done.stdout + done.stderr


def test_a_plugin_module_next_to_the_yaml_works_from_train_to_predict(tiny_data, tmp_path):
    (tmp_path / "toyplug.py").write_text(PLUGIN)
    raw = synth.tiny_config(tiny_data, plugins=["toyplug"], parallel={"backend": "loky", "n_jobs": 2})
    raw["combiner"]["strategy"] = "geomean"  # members train in worker processes: plugins load there too
    raw["members"][0]["weights"] = "toy://a"
    for member in raw["members"]:  # members trained and evaluated on the plugin's view (one view: exportable)
        member["view"] = "toy_centre"
    cfg = tmp_path / "cfg.yaml"
    # the plugin strategy's own setting is checked by its own schema, in the same one-line error
    cfg.write_text(yaml.safe_dump({**raw, "combiner": {**raw["combiner"], "geomean": {"sharpness": 0}}}))
    rc, out = _effens("train", str(cfg), "--out", str(tmp_path / "bad"), cwd="/")
    assert rc == 2 and "Traceback" not in out, out[-2000:]
    assert "`combiner.geomean.sharpness` must be in (0, inf); got 0" in out
    raw["combiner"]["geomean"] = {"sharpness": 2.0}
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    rc, out = _effens("train", str(cfg), "--out", str(run), cwd="/")  # the module is found next to the YAML
    assert rc == 0, out[-3000:]
    assert "Traceback" not in out
    combiner = json.loads((run / "combiner" / "combiner.json").read_text())
    assert combiner["strategy"] == "geomean" and "geomean" in combiner["strategies"]
    assert combiner["strategies"]["geomean"]["sharpness"] == 2.0
    assert yaml.safe_load((run / "config.yaml").read_text())["combiner"]["geomean"] == {"sharpness": 2.0}
    report = (run / "report" / "report.md").read_text()
    assert "toy figure test: circle=" in report and "ensemble geomean" in report
    assert "## Toy section" in report and "strategy **geomean**" in report
    page = (run / "report" / "index.html").read_text()  # the page shows the same figure and section
    assert '<a href="toy_test.txt">toy_test.txt</a>' in page and (run / "report" / "toy_test.txt").is_file()
    assert "<h2>Toy section</h2>" in page and "strategy <b>geomean</b>" in page
    assert json.loads((run / "members" / "b" / "member.json").read_text())["inputs"]["view"] == "toy_centre"
    assert json.loads((run / "members" / "a" / "member.json").read_text())["weights_file"] == "toy://a"

    log = tmp_path / "toyrt.log"
    rc, out = _effens(
        "predict",
        str(run),
        str(tiny_data / "test"),
        "--runtime",
        "toyrt",
        "--tta",
        "top_half",
        "--out",
        str(tmp_path / "p.csv"),
        env={"TOYRT_LOG": str(log)},
    )
    assert rc == 0, out[-3000:]
    assert "geomean; toyrt" in out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 18 and all(r["prediction"] in ("circle", "square", "stripes") for r in rows)
    assert sum(int(n) for n in log.read_text().split()) == 3 * 18  # every member ran on toyrt

    rc, out = _effens(
        "evaluate", str(run), str(tiny_data / "test"), "--strategy", "geomean", "--out", str(tmp_path / "ev")
    )
    assert rc == 0, out[-3000:]
    assert "toy figure" in (tmp_path / "ev" / "report.md").read_text()

    # export: the plugin strategy's own graph head inside ensemble.onnx, equal to its numpy vote
    rc, out = _effens("export", str(run), "--format", "onnx", "--strategy", "geomean", "--out", str(tmp_path / "x"))
    assert rc == 0, out[-3000:]
    check = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort, torch
        from ensemble.runfolder import load_run
        ens = load_run({str(run)!r})
        x = torch.rand(4, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            member = np.stack([fm.model.float().eval()(x).softmax(1).numpy() for fm in ens.members_])
        want = ens.combiner_.apply(member, "geomean")[1]
        sess = ort.InferenceSession({str(tmp_path / "x" / "ensemble.onnx")!r}, providers=["CPUExecutionProvider"])
        got = sess.run(None, {{"image": x.numpy()}})[0]
        assert np.allclose(got, want, atol=1e-4), (got, want)
        print("same")
    """)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.stdout.strip() == "same", done.stderr[-3000:]
    assert json.loads((tmp_path / "x" / "export.json").read_text())["strategy"] == "geomean"


def test_a_plugin_that_cannot_be_imported_is_one_line_naming_it(tiny_data, tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('the plugin is broken')\n")
    for plugins, message in (
        (["broken"], "`plugins`: cannot import 'broken': RuntimeError: the plugin is broken"),
        (["absent_module"], "`plugins`: cannot import 'absent_module': ModuleNotFoundError"),
        (["missing.py"], "`plugins`: cannot import 'missing.py': FileNotFoundError"),
    ):
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, plugins=plugins)))
        rc, out = _effens("train", str(cfg), "--out", str(tmp_path / "run"))
        assert rc == 2 and "Traceback" not in out, out[-2000:]
        assert message in out
        assert not (tmp_path / "run").exists()


def test_plugin_files_never_replace_modules_and_a_failed_one_leaves_nothing_registered(tmp_path):
    """Two plugin files of one name, one named like a standard module, a .py path, and a
    plugin that registers a view and then fails (loaded again once fixed)."""
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plugin.py").write_text(
            textwrap.dedent(f"""
            from members.views import view
            @view(tta_only=True)
            def view_{folder}(arr, inputs):
                return arr
        """)
        )
    (tmp_path / "string.py").write_text(
        "from members.views import view\n@view(tta_only=True)\ndef view_string(arr, inputs):\n    return arr\n"
    )
    (tmp_path / "half.py").write_text(
        "from members.views import view\n"
        "@view(tta_only=True)\ndef half_view(arr, inputs):\n    return arr\n"
        "raise RuntimeError('half-way')\n"
    )
    code = textwrap.dedent(f"""
        import string, sys
        from ensemble.config import ConfigError
        from ensemble.plugins import load_plugins
        from members.views import VIEWS
        root = {str(tmp_path)!r}
        load_plugins(["one/plugin.py", "two/plugin.py", "string"], root)
        assert {{"view_one", "view_two", "view_string"}} <= set(VIEWS), list(VIEWS)
        assert sys.modules["string"] is string and hasattr(string, "ascii_letters")  # the standard one
        try:
            load_plugins(["half"], root)
        except ConfigError as exc:
            assert "RuntimeError: half-way" in str(exc), exc
        assert "half_view" not in VIEWS  # rolled back
        fixed = open(root + "/half.py").read().replace("raise", "# raise")
        open(root + "/half.py", "w").write(fixed)
        load_plugins(["half"], root)  # fixed: loads, no "already registered"
        assert "half_view" in VIEWS
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_plugin_may_not_take_a_builtin_name(tiny_data, tmp_path):
    (tmp_path / "thief.py").write_text(
        textwrap.dedent("""
        from ensemble.combining.strategies import Strategy, register

        @register
        class Soft(Strategy):
            name = "soft"
    """)
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, plugins=["thief"])))
    rc, out = _effens("train", str(cfg), "--out", str(tmp_path / "run"))
    assert rc == 2 and "Traceback" not in out
    assert "a strategy named 'soft' is already registered (by ensemble.combining.strategies)" in out


def _installed_plugin(root, body: str) -> dict:
    """A distribution in ``root`` with one ``effens.plugins`` entry point; the environment
    that puts it on the path."""
    (root / "toy_effens_ep.py").write_text(body)
    info = root / "toy_effens_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-effens-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[effens.plugins]\ntoy = toy_effens_ep\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_an_installed_entry_point_plugin_reaches_the_help_choices(tmp_path):
    env = _installed_plugin(
        tmp_path,
        textwrap.dedent('''
        import numpy as np
        from ensemble.combining.strategies import Strategy, register
        from members.runtimes import TorchRuntime
        from members.runtimes import register as register_runtime
        from members.views import view

        @register
        class ToyVote(Strategy):
            name = "toyvote"

            def apply(self, proba):
                p = proba.mean(axis=0)
                return p.argmax(axis=1), p

            def graph_head(self):
                from ensemble.combining.graph_heads import WeightedMean
                return WeightedMean(None)

        @register_runtime("toyrt")
        class ToyRuntime(TorchRuntime):
            """Eager torch under another name."""

        @view(tta_only=True)
        def toyview(arr, inputs):
            return arr
    '''),
    )
    for command, names in (
        (["predict", "--help"], ("toyvote", "toyrt", "toyview")),
        (["evaluate", "--help"], ("toyvote", "toyrt", "toyview")),
        (["export", "--help"], ("toyvote",)),
    ):
        rc, out = _effens(*command, env=env)
        assert rc == 0 and all(n in out for n in names), out[-2000:]
        rc, out = _effens(*command)  # without the distribution on the path: not there
        assert rc == 0 and not any(n in out for n in names)


def test_a_broken_entry_point_plugin_is_one_line_naming_it_and_help_and_version_load_none(tiny_data, tmp_path):
    env = _installed_plugin(tmp_path, "raise ImportError('half-installed')\n")
    for argv in (["--help"], ["--version"]):
        rc, out = _effens(*argv, env=env)
        assert rc == 0 and "half-installed" not in out and "ERROR" not in out, out[-2000:]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data)))
    for body, said in (
        ("raise ImportError('half-installed')\n", "ImportError: half-installed"),
        ("import sys\nsys.exit(0)\n", "it called sys.exit(0)"),
    ):
        (tmp_path / "toy_effens_ep.py").write_text(body)
        rc, out = _effens("train", str(cfg), "--out", str(tmp_path / "run"), env=env)
        assert rc == 2 and "Traceback" not in out, out[-2000:]
        assert f"plugin entry point 'toy' (toy_effens_ep) failed to load: {said}" in out
        assert str(cfg) not in out  # the plugin is to blame, not the config
        assert not (tmp_path / "run").exists()


NAN_DEFAULT = textwrap.dedent("""
    import dataclasses

    from ensemble.schema import field, interval
    from ensemble.combining.strategies import Strategy, register


    @dataclasses.dataclass
    class Settings:
        sharpness: float = field(float("nan"), check=interval(0, None, low_open=True))


    @register
    class NanVote(Strategy):
        name = "nanvote"
        settings_schema = Settings

        def apply(self, proba):
            p = proba.mean(axis=0)
            return p.argmax(axis=1), p
""")


def test_a_plugin_that_fails_in_any_way_is_one_line_naming_it_before_any_file_is_written(tiny_data, tmp_path):
    """A NaN settings default, a plugin that calls sys.exit(0) or raises a BaseException, a
    settings_schema that is not a dataclass: each is one line naming the plugin, exit 2,
    and no run folder (a NaN default was found only after config.yaml, run.json and
    classes.json were written; sys.exit(0) ended `train` with exit 0 and no output)."""
    cases = {
        "nan_default": (
            NAN_DEFAULT,
            "RegistryError: strategy 'nanvote': its default settings are refused: "
            "`combiner.nanvote.sharpness` must be a finite number; got nan",
        ),
        "exits": ("import sys\nsys.exit(0)\n", "it called sys.exit(0)"),
        "base": ("raise BaseException('deep')\n", "BaseException: deep"),
        "not_a_schema": (
            NAN_DEFAULT.replace("settings_schema = Settings", "settings_schema = dict"),
            "RegistryError: strategy 'nanvote': `settings_schema` must be a dataclass or None",
        ),
    }
    for name, (body, said) in cases.items():
        (tmp_path / f"{name}.py").write_text(body)
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, plugins=[name])))
        rc, out = _effens("train", str(cfg), "--out", str(tmp_path / "run"))
        assert rc == 2 and "Traceback" not in out, (name, out[-2000:])
        assert f"{cfg}: `plugins`: cannot import {name!r}: {said}" in out, (name, out[-2000:])
        assert not (tmp_path / "run").exists(), name
