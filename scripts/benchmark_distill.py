"""Distillation benchmark (issue #40): one student against the best member and the ensemble.

    python scripts/benchmark_distill.py --runs runs/vds-bench/run-seed0 runs/vds-bench/run-seed1 --out runs/distill
    python scripts/benchmark_distill.py --config configs/vds.yaml --data ../shared/data/vds --seeds 3 --out runs/distill

Teachers: the finished runs given with ``--runs``, or ``--seeds N`` runs of ``--config``
(seed 0..N-1, data paths pointed at ``--data``) trained into ``OUT/run-seedK``, or reused
there when finished. For each teacher and each ``--variant`` (default: the defaults):

1. ``effens distill RUN --out OUT/<run>-<variant>`` (in this process; ``--set`` and
   ``--distill-config`` apply to every variant), its wall time, and one member's training
   time in the teacher run (their mean, from its metrics.json) for scale;
2. val and test macro-F1 (with bootstrap intervals) of the student, of the teacher's best
   member (chosen on val) and of the ensemble (the run's default strategy), and the
   student's val agreement with the ensemble: all from the student's report;
3. whole-process ``effens predict`` over the val photos (a CSV manifest of the run's val
   paths), student against ensemble: fresh processes, interleaved, median of ``--repeats``.

``OUT/results.json`` and ``OUT/results.md`` hold every figure with the machine and the
commit. A variant is ``NAME:KEY=VALUE,KEY=VALUE`` of ``distill.*`` keys, e.g.
``--variant fly: --variant cached8:distill.teacher_views=8`` measures the two ways of teaching.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_common import machine, run_main  # noqa: E402

log = logging.getLogger("benchmark_distill")


def variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"must be NAME:KEY=VALUE,... (or NAME: for the defaults); got {text!r}")
    return name.strip(), [s.strip() for s in sets.split(",") if s.strip()]


def teacher_runs(args, out: Path) -> list[Path]:
    """The runs given, or ``--seeds`` runs of ``--config`` trained (or reused) under ``out``."""
    if args.runs:
        return [Path(r) for r in args.runs]
    from ensemble.runfolder import RunFolder
    from ensemble.training import train_run

    data = Path(args.data).resolve()
    overrides = [f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"data.test={data / 'test'}"]
    runs = []
    for k in range(args.seeds):
        run = out / f"run-seed{k}"
        if not (RunFolder(run).has_combiner() and (run / "report" / "metrics.json").is_file()):
            t0 = time.perf_counter()
            train_run(args.config, str(run), overrides=[*overrides, *args.train_overrides, f"seed={k}"])
            log.info("trained %s in %.0f s", run, time.perf_counter() - t0)
        runs.append(run)
    return runs


def val_manifest(run: Path, where: Path) -> Path:
    """A CSV manifest of the run's val photos (what both predicts read)."""
    from ensemble.runfolder import RunFolder

    paths = RunFolder(run).load_predictions("val")[0]
    where.parent.mkdir(parents=True, exist_ok=True)
    with open(where, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path"])
        w.writerows([p] for p in paths)
    return where


def predict_seconds(runs: dict[str, Path], manifest: Path, repeats: int) -> dict[str, dict]:
    """Wall time of fresh ``effens predict`` processes over ``manifest``, interleaved; median counts."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in runs.items():  # one untimed call each: runtime caches (exported members) built
            _predict(run, manifest, Path(tmp) / f"{name}-warm.csv")
        for r in range(repeats):
            for name, run in runs.items():
                t0 = time.perf_counter()
                _predict(run, manifest, Path(tmp) / f"{name}-{r}.csv")
                times[name].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}


def _predict(run: Path, manifest: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "ensemble", "predict", str(run), str(manifest), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        env=env,
    )  # this checkout's effens
    if done.returncode:
        raise SystemExit(f"effens predict {run} failed: {done.stderr[-2000:]}")


def figures(doc: dict) -> dict:
    """The student's report -> per split, macro-F1 (+ interval) of student, best member, ensemble."""
    d = doc["distill"]
    out = {"best_member": d["best_member"], "strategy": d["teacher"]["strategy"]}
    for split, per in d["splits"].items():
        for who, key in (("student", "student"), ("best_member", "best_member"), ("ensemble", "teacher")):
            m = per[key]
            out.setdefault(split, {})[who] = {"macro_f1": m["macro_f1"], "interval": m["interval"], "ece": m["ece"]}
        out[split]["student_agreement_with_ensemble"] = per["student"]["agreement"]
    return out


def distil_one(run: Path, name: str, sets: list[str], args, out: Path) -> dict:
    from ensemble.distill import distill_run

    student = out / f"{run.name}-{name}"
    t0 = time.perf_counter()
    doc = distill_run(str(run), str(student), args.distill_config, [*args.overrides, *sets])
    wall = time.perf_counter() - t0
    teacher = json.loads((run / "report" / "metrics.json").read_text())
    member_s = list(((teacher.get("timing") or {}).get("members_train_s") or {}).values())
    one = statistics.mean(member_s) if member_s else float("nan")
    res = {
        "run": str(run),
        "variant": name,
        "sets": sets,
        "student": str(student),
        **figures(doc),
        "distill_wall_s": wall,
        "student_train_s": doc["timing"]["members_train_s"]["student"],
        "teacher_labelling_s": doc["timing"].get("teacher_labelling_s", 0.0),
        "one_member_train_s": one,
        "distill_vs_one_member": wall / one if one == one and one else None,
    }
    if args.repeats:
        manifest = val_manifest(run, out / "val_photos" / f"{run.name}.csv")
        res["predict_val"] = predict_seconds({"student": student, "ensemble": run}, manifest, args.repeats)
        res["predict_val"]["images"] = sum(1 for _ in open(manifest, encoding="utf-8")) - 1
    log.info(  # val, not test: test is read once, from the final table
        "%s %s: student val macro-F1 %.4f (best member %.4f, ensemble %.4f), agrees with the ensemble %.3f, "
        "distil %.0f s",
        run.name,
        name,
        res["val"]["student"]["macro_f1"],
        res["val"]["best_member"]["macro_f1"],
        res["val"]["ensemble"]["macro_f1"],
        res["val"]["student_agreement_with_ensemble"],
        wall,
    )
    return res


def markdown(r: dict) -> str:
    rows = [
        "| teacher | variant | split | student | best member | ensemble | student agrees with ensemble |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["students"]:
        for split in ("val", "test"):
            if split not in e:
                continue
            f = e[split]
            cell = lambda m: f"{m['macro_f1']:.4f} [{m['interval'][0]:.3f}, {m['interval'][1]:.3f}]"  # noqa: E731
            rows.append(
                f"| {Path(e['run']).name} | {e['variant']} | {split} | {cell(f['student'])} | "
                f"{cell(f['best_member'])} ({e['best_member']}) | {cell(f['ensemble'])} ({e['strategy']}) | "
                f"{f['student_agreement_with_ensemble']:.4f} |"
            )
    rows += [
        "",
        "| teacher | variant | distil wall s | of which teacher labelling s | one member's train s | ratio | "
        "predict val: student s | ensemble s | images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["students"]:
        p = e.get("predict_val") or {}
        ratio = f"{e['distill_vs_one_member']:.2f}x" if e["distill_vs_one_member"] else "-"
        rows.append(
            f"| {Path(e['run']).name} | {e['variant']} | {e['distill_wall_s']:.0f} | "
            f"{e['teacher_labelling_s']:.0f} | {e['one_member_train_s']:.0f} | {ratio} | "
            + (
                f"{p['student']['median_s']:.2f} | {p['ensemble']['median_s']:.2f} | {p['images']} |"
                if p
                else "- | - | - |"
            )
        )
    m = r["machine"]
    rows += [
        "",
        f"machine: {m['cpu']} ({', '.join(m['flags']) or 'no listed flags'}), {m['cores']} cores, "
        f"Python {m['python']}, commit {m['commit']}; wall time {r['wall_s']:.0f} s",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", help="finished teacher runs (else --config, --data and --seeds)")
    p.add_argument("--config", default="configs/vds.yaml", help="the teachers' training config (with --seeds)")
    p.add_argument("--data", default="../shared/data/vds", help="root with train/val/test (with --seeds)")
    p.add_argument("--seeds", type=int, default=3, help="teachers to train or reuse (seed 0..N-1) without --runs")
    p.add_argument(
        "--train-set",
        dest="train_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training key of the teachers trained here",
    )
    p.add_argument("--distill-config", help="a YAML file with a `distill:` section, for every student")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a `distill.*` key for every student",
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        type=variant,
        metavar="NAME:KEY=VALUE,...",
        help="a student per teacher with these `distill.*` keys (repeatable; default: `default:`)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed predict processes per model (0: no timing)")
    p.add_argument("--out", default="runs/distill-bench")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "runs": args.runs,
        "config": None if args.runs else args.config,
        "overrides": args.overrides,
        "distill_config": args.distill_config,
        "machine": machine(),
        "students": [],
    }
    for run in teacher_runs(args, out):
        for name, sets in args.variants or [("default", [])]:
            results["students"].append(distil_one(run, name, sets, args, out))
    results["wall_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    run_main(main)
