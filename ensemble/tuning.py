"""``effens tune``: search the members' bagging ratios (and replacement) cheaply.

Two modes (``tune.mode``; ``auto`` picks features when every member has
``freeze: backbone``):

- features: each member's frozen-backbone features of the train and val images are
  computed once (cached in ``OUT/features``); a candidate only trains linear heads on
  index lists into that cache (no augmentation: a fast proxy for deeper fine-tuning);
- full: each candidate is fitted exactly as ``train`` fits (the same estimator, sampling,
  member jobs, threading and device plan, OOB and combiner code), in memory;
  ``method: halving`` gives full epochs only to the best candidates of each round.

Either way a candidate is scored by the same code as ``train``'s report: the combiner
fitted as configured (``tune.strategy`` as its strategy), then
:mod:`ensemble.reporting.evaluation` on val or OOB.

Each finished candidate is written to ``OUT/candidates/`` at once; a killed tune
continues with the candidates it has not finished.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from .bagging import draw_all, oob_indices
from .combining.strategies import FitData, fit_combiner
from .config import CandidatesConfig, Config, ParallelConfig, config_to_dict, dump_config, load_config
from .data import Dataset, cache_size, decode_split, load_dataset
from .estimator import images_fingerprint
from .files import atomic_write_json, atomic_write_safetensors, atomic_write_text, read_json, sha256_json, write_files
from .member_jobs import member_seed
from .metrics import diversity
from .parallel import torch_threads
from .reporting.evaluation import evaluate_split, oob_report
from .reporting.markdown import format_table
from .runfolder import CONFIG_NAME, REPORT_NAME

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Candidate:
    ratios: tuple[float, ...]
    replace: tuple[bool, ...]

    @property
    def id(self) -> str:
        return "r" + "-".join(f"{r:g}" for r in self.ratios) + "_w" + "".join("1" if b else "0" for b in self.replace)


#: candidates a tune may try without `--yes` (each one trains or fits every member)
GRID_LIMIT = 1000
#: candidates no search tries, even with `--yes` (they would not fit in memory as a list)
HARD_LIMIT = 1_000_000
#: candidates per second of the cached-feature mode on 2 CPU cores (issue #22), for the estimate
FEATURE_MODE_RATE = 4.0


def _member_options(tune, n_members: int) -> list[list[tuple[float, bool]]]:
    per_member = isinstance(tune.ratios[0], list)
    if tune.tie_members and not per_member:
        return [list(itertools.product(tune.ratios, tune.replace))]
    lists = tune.ratios if per_member else [tune.ratios] * n_members
    return [list(itertools.product(lst, tune.replace)) for lst in lists]


def count_candidates(tune, n_members: int) -> int:
    """How many candidates the grid holds (computed, not enumerated), before ``budget``."""
    return int(np.prod([len(o) for o in _member_options(tune, n_members)], dtype=object))


def check_grid_size(tune, n_members: int, yes: bool = False) -> int:
    """The number of candidates this search will try; past :data:`GRID_LIMIT` without ``yes``
    a refusal with the count and a time estimate."""
    from .config import ConfigError

    total = count_candidates(tune, n_members)
    n = min(total, tune.budget) if tune.budget and tune.method in ("random", "halving") else total
    if n > HARD_LIMIT:
        raise ConfigError(
            f"`tune` would try {n:,} candidates ({tune.method} over {total:,}); more than "
            f"{HARD_LIMIT:,} cannot be listed even with --yes: set `tune.method: random` with a "
            f"`tune.budget`"
        )
    if n > GRID_LIMIT and not yes:
        hours = n / FEATURE_MODE_RATE / 3600
        raise ConfigError(
            f"`tune` would try {n:,} candidates ({tune.method} over {total:,}), more than "
            f"{GRID_LIMIT:,}: at about {FEATURE_MODE_RATE:g} candidates/s (cached-feature mode, "
            f"2 cores) that is {hours:,.1f} hours or more; set `tune.method: random` with "
            f"`tune.budget`, or pass --yes"
        )
    return n


def enumerate_candidates(tune, n_members: int, seed: int = 0) -> list[Candidate]:
    """Every candidate of the grid, or ``budget`` of them drawn at random (method random)."""
    options = _member_options(tune, n_members)
    tied = len(options) == 1 and n_members > 1

    def make(combo) -> Candidate:
        if tied:
            return Candidate((combo[0][0],) * n_members, (combo[0][1],) * n_members)
        return Candidate(tuple(o[0] for o in combo), tuple(o[1] for o in combo))

    total = count_candidates(tune, n_members)
    sample = tune.method == "random" or (tune.method == "halving" and tune.budget)
    if sample and total > 100_000:  # too many to list: draw distinct index tuples instead
        rng = np.random.default_rng(seed)
        k = min(tune.budget or total, total)
        seen: set[tuple[int, ...]] = set()
        while len(seen) < k:
            seen.add(tuple(int(rng.integers(len(o))) for o in options))
        return [make(tuple(o[i] for o, i in zip(options, idx))) for idx in sorted(seen)]
    out = [make(combo) for combo in itertools.product(*options)]
    if sample:
        k = min(tune.budget or len(out), len(out))
        pick = np.random.default_rng(seed).choice(len(out), size=k, replace=False)
        out = [out[i] for i in sorted(pick)]
    return out


def score(metrics: dict, metric: str) -> float:
    """Higher is better: log loss is negated."""
    return -metrics["log_loss"] if metric == "log_loss" else metrics[metric]


def select_best(rows: list[dict]) -> dict:
    """The candidate with the highest ensemble score in the last round (ties: first)."""
    last = max(r["round"] for r in rows)
    final = [r for r in rows if r["round"] == last]
    return max(final, key=lambda r: r["ensemble_score"])


def halving_schedule(n: int, max_epochs: int, eta: int, min_epochs: int) -> list[tuple[int, int]]:
    """(candidates kept, epochs) per round: candidates shrink by eta down to one, epochs
    grow by eta up to ``max_epochs`` in the last round."""
    rounds = 1
    while n // eta**rounds >= 1:  # integer log: floor(log_eta(n)) + 1 rounds
        rounds += 1
    out = []
    for r in range(rounds):
        epochs = max(min_epochs, int(round(max_epochs / eta ** (rounds - 1 - r))))
        out.append((max(1, math.ceil(n / eta**r)), min(epochs, max_epochs)))
    return out


class TuneContext:
    """Data, decoded images and (in feature mode) the cached features, prepared once."""

    def __init__(self, cfg: Config, out: Path, data: Dataset) -> None:
        self.cfg = cfg
        self.out = out
        self.classes = data.classes
        self.data_changes = data.changes  # what data.exclude / data.relabel changed, per split
        size = cache_size(cfg)
        self.train, self.train_imgs, _ = decode_split(data.train, size, cfg.data.on_bad_image, "train")
        self.val, self.val_imgs, _ = decode_split(data.val, size, cfg.data.on_bad_image, "val")
        self.y = self.train.encode(self.classes)
        self.y_val = self.val.encode(self.classes)
        # the images themselves (contents, labels, order) key every cache: an edited exclude list,
        # a replaced photo or a relabel is another tuning, never finished candidates of the old one
        self.data_print = images_fingerprint(self.train.paths + self.val.paths, self.train.labels + self.val.labels)
        mode = cfg.tune.mode
        self.feature_mode = mode == "features" or (
            mode == "auto" and all(m.train.freeze == "backbone" for m in cfg.members)
        )
        self.features: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.feature_mode:
            self.features = [self._member_features(i, spec) for i, spec in enumerate(cfg.members)]
        settings = {k: v for k, v in config_to_dict(cfg).items() if k not in ("tune", "parallel")}
        self.key = sha256_json({"config": settings, "data": self.data_print})

    def _member_features(self, index: int, spec) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) features of one frozen member, from ``OUT/features`` when cached."""
        from safetensors.torch import load_file

        from members.features import extract_features
        from members.models import create_member, pick_device
        from members.transforms import eval_tensor

        key = sha256_json({"spec": config_to_dict(self.cfg)["members"][index], "data": self.data_print})
        path = self.out / "features" / f"{spec.name}.safetensors"
        if path.is_file():
            cached = load_file(str(path))
            if read_json(path.with_suffix(".json")).get("key") == key:
                return cached["train"], cached["val"]
        t0 = time.perf_counter()
        member = create_member(spec, len(self.classes))
        device = pick_device(self.cfg.device)
        bs = spec.train.eval_batch_size
        tr = extract_features(member.model, eval_tensor(self.train_imgs, member.inputs), member.inputs, bs, device)
        va = extract_features(member.model, eval_tensor(self.val_imgs, member.inputs), member.inputs, bs, device)
        atomic_write_safetensors(path, {"train": tr, "val": va})
        atomic_write_json(path.with_suffix(".json"), {"key": key, "seconds": time.perf_counter() - t0})
        log.info(
            "member %s: cached %d x %d features in %.1f s",
            spec.name,
            len(tr) + len(va),
            tr.shape[1],
            time.perf_counter() - t0,
        )
        return tr, va


def candidate_specs(cfg: Config, cand: Candidate, epochs: int | None) -> list:
    """The members as ``train`` would get them with this candidate's bagging (and epochs); without
    pool candidates (tune scores bagging ratios on the members)."""
    return [
        dataclasses.replace(
            spec,
            bagging=dataclasses.replace(spec.bagging, ratio=cand.ratios[i], replace=cand.replace[i]),
            train=dataclasses.replace(spec.train, epochs=epochs or spec.train.epochs),
            candidates=CandidatesConfig(),
        )
        for i, spec in enumerate(cfg.members)
    ]


def evaluate_candidate(
    ctx: TuneContext, cand: Candidate, epochs: int | None = None, device: str | None = None, threads: int | None = None
) -> dict:
    """Fit the members of one candidate and score them and the ensemble."""
    cfg, k = ctx.cfg, len(ctx.classes)
    t0 = time.perf_counter()
    specs = candidate_specs(cfg, cand, epochs)
    if ctx.feature_mode:
        from members.features import head_proba, train_head

        samples = draw_all(ctx.y, [m.bagging for m in specs], cfg.seed)
        oob_sets = [oob_indices(len(ctx.y), s) for s in samples]
        val_rows, oob_p = [], []
        with torch_threads(threads):
            for i, spec in enumerate(specs):
                tr, va = ctx.features[i]
                head = train_head(
                    lambda idx: tr[idx], tr.shape[1], ctx.y, samples[i], k, spec.train, member_seed(cfg.seed, i)
                )
                val_rows.append(head_proba(head, va))
                oob_p.append(
                    head_proba(head, tr[torch.as_tensor(oob_sets[i])]) if len(oob_sets[i]) else np.zeros((0, k))
                )
        val_p = np.stack(val_rows)
    else:
        from .estimator import BaggedEnsemble

        ens = BaggedEnsemble(
            specs,
            cfg.combiner,
            cfg.seed,
            device or cfg.device,
            ParallelConfig(threads_per_job=threads),
            cfg.precision,
            "torch",
            cfg.plugins,
        )
        ens.fit(ctx.train_imgs, ctx.y, X_val=ctx.val_imgs, y_val=ctx.y_val, classes=ctx.classes)
        val_p, oob_sets, oob_p = ens.val_proba_, ens.oob_indices_, ens.oob_proba_
    row: dict = {"candidate": cand.id, "epochs": epochs or max(m.train.epochs for m in cfg.members)}
    row.update(score_candidate(ctx, val_p, oob_sets, oob_p, cand))
    row["seconds"] = time.perf_counter() - t0
    return row


def score_candidate(
    ctx: TuneContext, val_p: np.ndarray, oob_sets: list[np.ndarray], oob_p: list[np.ndarray], cand: Candidate
) -> dict:
    """Member and ensemble scores of one candidate (tune's objective and metric), diversity."""
    cfg, tune = ctx.cfg, ctx.cfg.tune
    names = [m.name for m in cfg.members]
    settings = dataclasses.replace(cfg.combiner, strategy=tune.strategy)
    data = FitData.from_oob_lists(val_p, ctx.y_val, oob_sets, oob_p, ctx.y)
    comb = fit_combiner(settings, names, ctx.classes, data, cfg.seed, only=[tune.strategy])
    if tune.objective == "val":
        results = evaluate_split(val_p, ctx.y_val, comb, [tune.strategy])
        members, ens = [results[n] for n in names], results[tune.strategy]
    else:
        rep = oob_report(comb, ctx.y, oob_sets, oob_p)
        members, ens = [rep["members"][n] for n in names], rep["strategies"][tune.strategy]
    nan = {"macro_f1": float("nan"), "accuracy": float("nan"), "log_loss": float("nan")}
    row: dict = {}
    for i, n in enumerate(names):
        row[f"{n}_ratio"] = cand.ratios[i]
        row[f"{n}_replace"] = cand.replace[i]
        row[f"{n}_score"] = score(members[i] or nan, tune.metric)
    row["ensemble_score"] = score(ens or nan, tune.metric)
    row.update(diversity(np.asarray(val_p).argmax(2), ctx.y_val))
    return row


def _run_round(ctx: TuneContext, cands: list[Candidate], epochs: int | None, rnd: int) -> list[dict]:
    """Evaluate candidates not yet finished (joblib), each saved as soon as it is done."""
    from .parallel import plan_jobs, run_jobs

    folder = ctx.out / "candidates"

    def path(c: Candidate) -> Path:
        return folder / f"{c.id}_e{epochs or 0}.json"

    def done(c: Candidate) -> dict | None:
        p = path(c)
        if p.is_file():
            doc = read_json(p)
            if doc.get("key") == ctx.key:
                return doc["row"]
        return None

    todo = [c for c in cands if done(c) is None]
    if len(todo) < len(cands):
        log.info(
            "round %d: %d of %d candidates already finished, skipping them", rnd, len(cands) - len(todo), len(cands)
        )
    par = ctx.cfg.parallel
    plan = plan_jobs(len(todo), par.n_jobs, ctx.cfg.device, par.threads_per_job)
    jobs = [
        (
            c.id,
            dict(
                ctx=ctx,
                cand=c,
                epochs=epochs,
                rnd=rnd,
                path=str(path(c)),
                device=plan.devices[k],
                threads=plan.threads if plan.n_jobs > 1 or par.threads_per_job else None,
            ),
        )
        for k, c in enumerate(todo)
    ]
    run_jobs(_candidate_job, jobs, par.backend, plan.n_jobs, plan.threads, par.address)
    rows = [done(c) for c in cands]
    missing = [c.id for c, r in zip(cands, rows) if r is None]
    if missing:  # a bug: run_jobs returns only when every job wrote its row
        raise RuntimeError(f"tune candidates {missing} finished without writing their results")
    return [r for r in rows if r is not None]


def _candidate_job(
    ctx: TuneContext, cand: Candidate, epochs: int | None, rnd: int, path: str, device: str, threads: int | None
) -> None:
    """One candidate, evaluated and saved (a joblib job: in process, loky, Ray or Dask)."""
    from .plugins import load_entry_points, load_plugins

    load_entry_points()  # a worker process starts without them
    load_plugins(ctx.cfg.plugins)
    row = evaluate_candidate(ctx, cand, epochs, device, threads)
    row["round"] = rnd
    atomic_write_json(path, {"key": ctx.key, "row": row})
    log.info("candidate %s (%s epochs): ensemble %.4f", cand.id, row["epochs"], row["ensemble_score"])


def tune_run(config_path: str, out: str, overrides: list[str] | None = None, yes: bool = False) -> dict:
    """Run the search; writes results.csv, report.md, scores.png and best.yaml into ``out``.
    A search of more than :data:`GRID_LIMIT` candidates needs ``yes``."""
    from .files import RECORD, refuse_foreign
    from .runfolder import RunFolder

    t0 = time.perf_counter()
    cfg = load_config(config_path, overrides)
    check_grid_size(cfg.tune, len(cfg.members), yes)
    data = load_dataset(cfg.data, cfg.seed)  # the data and its lists, checked before anything is written
    out_dir = Path(out)
    refuse_foreign(out_dir, "tune", "effens tune", whole=True)  # a search's caches are all ours
    from .config import data_inputs
    from .tracking import check_tracking, config_params, environment_tags, log_tune, tracking

    check_tracking(cfg.tracking, [config_path, *data_inputs(cfg)], [out_dir])
    folder = RunFolder(out_dir)
    folder.lock()
    try:
        atomic_write_json(out_dir / RECORD, {"kind": "tune", "files": []})
        with tracking(
            cfg.tracking,
            "tune",
            out_dir.resolve().name,
            config_params(cfg),
            {**environment_tags("tune", cfg), "effens.tune_dir": str(out_dir.resolve())},
        ) as tracker:
            summary = _tune(cfg, out_dir, t0, data)
            log_tune(tracker, summary["rows"], [m.name for m in cfg.members], summary["best"], out_dir)
        return summary
    finally:
        folder.unlock()


def _tune(cfg: Config, out_dir: Path, t0: float, data: Dataset) -> dict:
    atomic_write_text(out_dir / CONFIG_NAME, dump_config(cfg))
    ctx = TuneContext(cfg, out_dir, data)
    tune = cfg.tune
    cands = enumerate_candidates(tune, len(cfg.members), cfg.seed)
    if tune.objective == "oob" and all(all(r >= 1 for r in c.ratios) and not any(c.replace) for c in cands):
        from .config import ConfigError

        raise ConfigError(
            "`tune.objective: oob` needs out-of-bag images, but every candidate draws all of them "
            "(ratio 1 without replacement); add ratios below 1, `tune.replace: [true]`, or use "
            "`tune.objective: val`"
        )
    log.info(
        "tuning %d candidates (%s, %s mode, objective %s %s)",
        len(cands),
        tune.method,
        "cached-feature" if ctx.feature_mode else "full-training",
        tune.objective,
        tune.metric,
    )
    rows: list[dict] = []
    if tune.method == "halving":
        max_epochs = max(m.train.epochs for m in cfg.members)
        alive = cands
        for rnd, (keep, epochs) in enumerate(halving_schedule(len(cands), max_epochs, tune.eta, tune.min_epochs)):
            alive = alive[:keep]
            got = _run_round(ctx, alive, epochs, rnd)
            rows += got
            order = sorted(range(len(alive)), key=lambda i: -got[i]["ensemble_score"])
            alive = [alive[i] for i in order]
    else:
        rows = _run_round(ctx, cands, None, 0)
    if all(not np.isfinite(r["ensemble_score"]) for r in rows):
        from .files import RunError

        raise RunError(
            f"no candidate has a finite {tune.objective} {tune.metric} (no {tune.objective} images "
            f"to score on); results.csv is not written"
        )
    best = select_best(rows)
    best_cfg = copy.deepcopy(cfg)
    for i, spec in enumerate(best_cfg.members):
        spec.bagging.ratio = best[f"{spec.name}_ratio"]
        spec.bagging.replace = best[f"{spec.name}_replace"]
    atomic_write_text(
        out_dir / "best.yaml",
        f"# effens tune: best candidate {best['candidate']} "
        f"(ensemble {tune.objective} {tune.metric} {best['ensemble_score']:.4f})\n" + dump_config(best_cfg),
    )
    write_tune_outputs(out_dir, rows, [m.name for m in cfg.members], tune, ctx.data_changes)
    summary = {
        "candidates": len(cands),
        "rows": rows,
        "best": best,
        "seconds": time.perf_counter() - t0,
        "feature_mode": ctx.feature_mode,
        "data_changes": ctx.data_changes,
    }
    atomic_write_json(out_dir / "summary.json", {k: v for k, v in summary.items() if k != "rows"})
    return summary


COLUMNS = (
    "candidate",
    "round",
    "epochs",
    "ensemble_score",
    "disagreement",
    "q_statistic",
    "error_correlation",
    "seconds",
)


def result_columns(names: list[str]) -> list[str]:
    return (
        [COLUMNS[0], COLUMNS[1], COLUMNS[2]]
        + [f"{n}_{k}" for n in names for k in ("ratio", "replace", "score")]
        + list(COLUMNS[3:])
    )


def write_tune_outputs(out: Path, rows: list[dict], names: list[str], tune, data_changes: dict | None = None) -> None:
    cols = result_columns(names)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({c: (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in cols})
    atomic_write_text(out / "results.csv", buf.getvalue())
    best = select_best(rows)
    md = [
        "# effens tune",
        "",
        f"Objective: {tune.objective} {tune.metric} of the `{tune.strategy}` ensemble; "
        f"method {tune.method}. Best: **{best['candidate']}** ({best['ensemble_score']:.4f}); "
        f"`best.yaml` holds its config.",
        "",
        format_table(_cells(rows, cols), markdown=True),
    ]
    from .reporting.html import simple_page

    intro = (
        f"Objective: {tune.objective} {tune.metric} of the {tune.strategy} ensemble; method {tune.method}. "
        f"Best: {best['candidate']} ({best['ensemble_score']:.4f}); best.yaml holds its config."
    )
    if data_changes:  # as train's report counts them
        from .data import describe_changes

        changed = f"Changed by `data.exclude` / `data.relabel`: {describe_changes(data_changes)}."
        md[2:2] = [changed, ""]
        intro += " " + changed.replace("`", "")
    write_files(
        out,
        {
            REPORT_NAME: "\n".join(md) + "\n",
            "scores.png": scores_png(rows, names, f"{tune.objective} {tune.metric}"),
            "index.html": simple_page(
                "effens tune", intro, _cells(rows, cols), ["scores.png"], highlight=best["candidate"]
            ),
        },
    )


def _cells(rows: list[dict], cols: list[str]) -> list[list[str]]:
    """Header and rows of ``cols`` as text (floats to 4 decimals)."""
    return [cols] + [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]


def table_text(rows: list[dict], names: list[str], top: int = 20) -> str:
    cols = (
        ["candidate", "epochs"]
        + [f"{n}_score" for n in names]
        + ["ensemble_score", "disagreement", "q_statistic", "seconds"]
    )
    ordered = sorted(rows, key=lambda r: (-r["round"], -r["ensemble_score"]))[:top]
    return format_table(_cells(ordered, cols))


def scores_png(rows: list[dict], names: list[str], ylabel: str) -> bytes:
    """Ensemble and member scores against the (mean) bagging ratio, one marker per replacement."""
    from .reporting.markdown import png_bytes, pyplot

    last = max(r["round"] for r in rows)
    rows = [r for r in rows if r["round"] == last]
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2), dpi=100)
    for who, key in [(n, f"{n}_score") for n in names] + [("ensemble", "ensemble_score")]:
        for repl, marker in ((True, "o"), (False, "s")):
            pts = sorted(
                (np.mean([r[f"{n}_ratio"] for n in names]), r[key])
                for r in rows
                if all(r[f"{n}_replace"] == repl for n in names)
            )
            if pts:
                xs, ys = zip(*pts)
                ax.plot(
                    xs,
                    ys,
                    marker=marker,
                    lw=2.5 if who == "ensemble" else 1,
                    ls="-" if repl else "--",
                    label=f"{who} ({'with' if repl else 'without'} replacement)",
                )
    ax.set_xlabel("bagging ratio (mean over members)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png_bytes(fig)
