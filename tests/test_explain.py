"""ensemble/explain.py: `effens explain` and its output folder."""

from ensemble.cli import main


def test_explain_refuses_a_folder_with_a_users_files(trained, tiny_data, tmp_path, fails):
    _, run = trained
    out = tmp_path / "mine"
    out.mkdir()
    (out / "explain.json").write_text('{"mine": true}')
    img = str(sorted((tiny_data / "test/circle").iterdir())[0])
    fails(main(["explain", str(run), img, "--out", str(out)]), "not written by effens explain")
    assert (out / "explain.json").read_text() == '{"mine": true}'
    fresh = tmp_path / "fresh"
    assert main(["explain", str(run), img, "--out", str(fresh)]) == 0
    assert main(["explain", str(run), img, "--out", str(fresh)]) == 0  # its own output: replaced
