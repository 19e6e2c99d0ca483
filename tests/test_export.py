"""ensemble/export.py: what ``ensemble.onnx`` may hold (#41, item 9)."""

import synth
import yaml

from ensemble.cli import main


def test_a_graph_over_members_of_different_views_is_refused(tiny_data, tmp_path, capsys, caplog):
    """One graph takes one input view: members trained on crop and on squash would all see
    the crop and answer unlike `effens predict`. The export is refused in one line naming
    each member and its view, exit 2, nothing written (default strategy and --strategy soft)."""
    raw = synth.tiny_config(tiny_data, epochs=1)
    raw["members"] = raw["members"][:2]
    raw["members"][1]["view"] = "squash"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0
    for extra in ([], ["--strategy", "soft"]):
        out = tmp_path / "export"
        caplog.clear()
        capsys.readouterr()
        assert main(["export", str(run), "--format", "onnx", "--out", str(out), *extra]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "seen under different views (a: crop, b: squash)" in errors[0], errors
        assert not out.exists()
