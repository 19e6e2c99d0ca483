"""report/index.html: numbers, galleries, links, escaping, and a click in a real browser."""

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import synth
from PIL import Image

from ensemble.cli import main


class Page(HTMLParser):
    """The cells, table rows, links, images and embedded data of one page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells, self.links, self.images, self.rows = [], [], [], []
        self._data, self._in_data, self._row, self._in_cell = "", False, None, False
        self.feed(text)
        self.data = json.loads(self._data)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "cell" in (a.get("class") or ""):
            self.cells.append(a)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "script" and a.get("id") == "data":
            self._in_data = True
        if tag == "tr":
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._row.append("")
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_data = False
        if tag in ("td", "th"):
            self._in_cell = False
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_data:
            self._data += data
        elif self._in_cell and self._row:
            self._row[-1] += data


def _page(folder: Path) -> Page:
    return Page((folder / "index.html").read_text(encoding="utf-8"))


def test_every_cell_gallery_and_number_matches_metrics_json(trained):
    _, run = trained
    report = run / "report"
    page, doc = _page(report), json.loads((report / "metrics.json").read_text())
    whos = list(doc["members"]) + list(doc["strategies"])
    assert len(page.cells) == 2 * len(whos) * 9  # val and test, 3 x 3 cells each
    for c in page.cells:
        split, who, t, p, n = (
            c["data-split"],
            c["data-who"],
            int(c["data-true"]),
            int(c["data-pred"]),
            int(c["data-count"]),
        )
        per = doc["members"].get(who) or doc["strategies"][who]
        assert per[split]["confusion_matrix"][t][p] == n
        S = page.data["splits"][split]
        in_gallery = [i for i, y in enumerate(S["y"]) if y == t and S["who"][who]["pred"][i] == p]
        assert len(in_gallery) == n
    # the summary table's figures are metrics.json's
    rows: dict = {}
    for r in page.rows:  # the summary table comes first (the run card's tables name members too)
        if r and r[0].rstrip(" *") in whos:
            rows.setdefault(r[0].rstrip(" *"), r[1:])
    for who in whos:
        per = doc["members"].get(who) or doc["strategies"][who]
        assert rows[who][2] == f"{per['val']['macro_f1']:.4f}" and rows[who][6] == f"{per['test']['accuracy']:.4f}"


def test_links_and_thumbnails_resolve_and_curves_and_diversity_are_shown(trained):
    _, run = trained
    report = run / "report"
    page = _page(report)
    for split, S in page.data["splits"].items():
        for link, thumb in zip(S["links"], S["thumbs"]):
            assert (report / unquote(link)).resolve().is_file()
            assert thumb and (report / unquote(thumb)).is_file()
    assert "training_curves.png" in page.images and (report / "training_curves.png").is_file()
    text = (report / "index.html").read_text()
    doc = json.loads((report / "metrics.json").read_text())
    p = doc["diversity"]["test"][0]
    # the registered section, converted from its Markdown: the same row as report.md's, as a table row
    assert "<h2>Diversity</h2>" in text and "<th>Q-statistic</th>" in text
    assert f"<tr><td>test</td><td>a / b</td><td>{p['disagreement']:.3f}</td><td>{p['q_statistic']:.3f}</td>" in text
    # every split figure is on the page as in report.md (reliability diagrams), each model figure linked
    for split in ("val", "test"):
        assert f'src="reliability_{split}.png"' in text
    assert 'href="confusion_a_test.png">heatmap</a>' in text and 'href="misclassified_a_test.csv"' in text
    assert [(p["a"], p["b"]) for p in doc["diversity"]["test"]] == [("a", "b"), ("a", "c"), ("b", "c")]
    md = (report / "report.md").read_text()
    p = doc["diversity"]["test"][0]
    assert "## Diversity" in md and f"| test | a / b | {p['disagreement']:.3f} | {p['q_statistic']:.3f} |" in md


def test_hostile_file_names_render_as_text_and_links_that_work(trained, tmp_path):
    _, run = trained
    data = tmp_path / "hostile"
    rng = np.random.default_rng(0)
    names = ["a b#1%20.png", "quote'\"x.png", "ünïcødé 車.png", "<script>alert(1)<script>.png"]
    for cls in synth.CLASSES:
        (data / cls).mkdir(parents=True)
        for name in names:
            synth.make_image(cls, rng).save(data / cls / name)
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(data), "--out", str(out)]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "<script>alert(1)" not in text
    page = _page(out)
    S = page.data["splits"]["eval"]
    assert sorted(set(S["names"])) == sorted(names)
    for link, thumb in zip(S["links"], S["thumbs"]):
        assert (out / unquote(link)).resolve().is_file(), link
        assert (out / unquote(thumb)).is_file(), thumb


def test_an_image_that_cannot_be_thumbnailed_gets_a_placeholder(tmp_path):
    from ensemble.reporting.assets import make_thumbnails
    from ensemble.reporting.html import JS

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (30, 20), "red").save(good)
    bad.write_bytes(b"not an image")
    mapping, files = make_thumbnails([str(good), str(bad)], lambda name: False)
    assert mapping[str(bad)] is None and mapping[str(good)] in files
    assert "no thumbnail" in JS  # what the page shows for a None thumbnail
    again, files2 = make_thumbnails([str(good)], lambda name: name in files)
    assert again == {str(good): mapping[str(good)]} and files2 == {}  # made once


def test_explain_and_report_saliency(tiny_data, tmp_path):
    import yaml

    cfg = synth.tiny_config(tiny_data, epochs=1, report={"saliency": True})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "-q"]) == 0
    doc = json.loads((run / "report/metrics.json").read_text())
    page = _page(run / "report")
    wrong = sum(
        1
        for s in ("val", "test")
        for i, y in enumerate(page.data["splits"][s]["y"])
        if page.data["splits"][s]["who"][doc["strategy"]]["pred"][i] != y
    )
    overlays = [v for s in page.data["splits"].values() for v in s["saliency"].values()]
    assert len(overlays) == wrong
    for o in overlays:
        assert set(o) == {"a", "b", "c", "mean"}
        assert all((run / "report" / unquote(f)).is_file() for f in o.values())
    out = tmp_path / "explained"
    img = next((tiny_data / "test/circle").iterdir())
    assert main(["explain", str(run), str(img), "--out", str(out)]) == 0
    listing = json.loads((out / "explain.json").read_text())
    got = listing["images"][0]
    assert got["path"] == str(img) and set(got["overlays"]) == {"a", "b", "c", "mean"}
    assert all(Image.open(out / f).size == (32, 32) for f in got["overlays"].values())


def test_gradcam_looks_where_the_class_evidence_is():
    """A toy network with one feature channel per image half, each class reading one channel:
    the map for a class lights up the half its evidence comes from."""
    import torch

    from members.models import InputConfig
    from members.saliency import gradcam

    class Toy(torch.nn.Module):
        def forward_features(self, x):
            left = torch.zeros_like(x[:, :1])
            left[..., :8] = 1
            return torch.cat([x[:, :1] * left, x[:, :1] * (1 - left)], dim=1)

        def forward_head(self, f):
            return f.mean(dim=(2, 3))

    inputs = InputConfig(16, 1.0, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    img = torch.full((2, 3, 16, 16), 200, dtype=torch.uint8)
    cam = gradcam(Toy(), img, inputs, np.array([1, 0]))
    assert cam[0][:, 8:].min() > 0.99 and cam[0][:, :8].max() == 0  # class 1: the right half
    assert cam[1][:, :8].min() > 0.99 and cam[1][:, 8:].max() == 0  # class 0: the left half


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here (Debian: apt-get install -y chromium); the browser test needs a real browser",
)
def test_a_click_on_a_cell_shows_its_images_in_headless_chromium(trained):
    _, run = trained
    url = (run / "report/index.html").resolve().as_uri() + "#selftest"
    dom = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HOME=str(run.parent)),
    ).stdout
    marker = 'data-selftest="'
    assert marker in dom, dom[-2000:]
    got = json.loads(dom.split(marker)[1].split('"')[0].replace("&quot;", '"'))
    assert got["count"] > 0 and got["shown"] == min(got["count"], got["page"]) and int(got["gallery"]) == got["count"]
