"""Evaluating a run directory: its trained optimizer against tuned optax baselines on a suite, with a report.

What ``experiments/evaluate.py`` does: load the workdir's optimizer (``trained.load``), train every task of the
suite with it (under each protocol) and with every baseline (``lopt.evaluation.evaluate_suite``; baselines come from
the on-disk cache when it has them), write ``evaluation.json``, ``evaluation.md`` and figures into
``<workdir>/evaluation`` (or ``out_dir``) for the suite's default steps and into ``horizon_<h>x/`` below it for every
other horizon, and log the first horizon's scalars and figures through the usual writers. Without a workdir only the
baselines are evaluated.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from lopt import checkpoints, writers
from lopt import pretrained as lopt_pretrained
from lopt.evaluation import headline as headline_lib
from lopt.evaluation import report as report_lib
from lopt.evaluation import scoring, suites, training, tuned_baselines
from lopt.runs import trained
from lopt.workdir import HORIZON_DIR, Workdir

TENSORBOARD_CHOICES = {"auto": None, "on": True, "off": False}
DEFAULT_NUM_STEPS = 200
DEFAULT_NUM_SEEDS = 4


def horizon_dir(out_dir: str, horizon: int) -> str:
  """Where the report of ``horizon`` x the default steps goes: ``out_dir`` for 1x, ``out_dir/horizon_<h>x`` else."""
  return out_dir if horizon == 1 else os.path.join(out_dir, HORIZON_DIR.format(horizon))


def check_horizons(horizons: Sequence[int]) -> tuple[int, ...]:
  """``horizons`` as distinct positive integers in the given order (multiples of the suite's default steps)."""
  if isinstance(horizons, (str, bytes)) or not horizons:
    raise ValueError(f"horizons must be a non-empty list of positive integers, got {horizons!r}.")
  try:
    values = tuple(int(h) for h in horizons)
  except (TypeError, ValueError) as e:
    raise ValueError(f"horizons must be positive integers (multiples of the default steps), got {horizons!r}.") from e
  if any(v < 1 or v != h for v, h in zip(values, [float(h) for h in horizons])) or len(set(values)) != len(values):
    raise ValueError(f"horizons must be distinct positive integers, got {list(horizons)}.")
  return values


def _load(workdir: str, step: int | None, trust_unverified: bool,
          printer: Callable[[str], None]) -> trained.TrainedOptimizer:
  """The workdir's trained optimizer; says which checkpoint step it is and which newer ones were skipped."""
  try:
    learned = trained.load(workdir, step=step, trust_unverified=trust_unverified)
  except checkpoints.UnverifiedCheckpointError as e:
    verified = checkpoints.latest_step(Workdir(workdir).checkpoints)
    choice = f"choose a verified step with --step (the newest is {verified})" if verified is not None else ""
    raise checkpoints.UnverifiedCheckpointError(
        f"{e} To evaluate it anyway pass --trust_unverified_checkpoint{'; or ' + choice if choice else ''}.",
        e.paths) from e
  newer = [s for s in checkpoints.steps_on_disk(Workdir(workdir).checkpoints) if s > learned.step]
  if step is None and newer:
    printer(f"Checkpoint step(s) {newer} of {workdir} failed verification (truncated or corrupt; see the warning "
            f"above): evaluating step {learned.step}, the newest that verifies.")
  else:
    printer(f"Evaluating checkpoint step {learned.step} of {workdir}.")
  return learned


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What ``evaluate_workdir`` produced: the first horizon's report, files and directory, and every horizon's
  report (``reports``, by horizon)."""

  report: dict[str, Any]
  paths: dict[str, str]
  out_dir: str
  reports: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


def evaluate_workdir(workdir: str | None, *, step: int | None = None, out_dir: str | None = None,
                     suite: str = "default", baselines: Sequence[str] | None = None, num_steps: int | None = None,
                     num_seeds: int | None = None, seed: int = 0, baseline_steps_factor: int = 2,
                     eval_every: int | None = None, fast_compile: bool = False, wandb_mode: str = "offline",
                     tensorboard: str = "auto", trust_unverified: bool = False,
                     printer: Callable[[str], None] = print, pretrained: str | None = None,
                     protocols: Sequence[str] = scoring.PROTOCOLS, horizons: Sequence[int] = (1,),
                     baseline_cache: str | None = None) -> Evaluation:
  """Scores the trained optimizer of ``workdir`` (or only the baselines) on ``suite``; see the module docstring.

  Args:
    workdir: a ``meta_train`` run directory, or None for a baselines-only evaluation (then ``out_dir`` is needed).
    step: the checkpoint step to evaluate; default the newest that verifies (a truncated or corrupt newer one is
      skipped, as ``meta_train`` does, and the output says so).
    out_dir: where the report goes; default ``<workdir>/evaluation``.
    suite: a registered ``eval_suite``.
    baselines: names of ``tuned_baselines.default_baselines`` to run; default all.
    num_steps: inner steps of the learned optimizer per task; default the suite's (``suites.SUITE_SETTINGS``) or 200.
    num_seeds: tasks (seeds) per suite entry; default the suite's or 4.
    seed: selects the held-out tasks.
    baseline_steps_factor: baselines train this many times longer (speed-ups up to it can be measured).
    eval_every: steps between test losses; default ``num_steps // 10``.
    fast_compile: faster XLA compiles, slower steps (``training.FAST_COMPILE``).
    wandb_mode: of the evaluation's wandb run.
    tensorboard: ``"auto"`` (when the extra is installed), ``"on"`` or ``"off"``.
    trust_unverified: evaluate a checkpoint whose checksum sidecar is missing instead of refusing it.
    printer: receives progress lines (and which checkpoint step is evaluated, and why when it is not the newest).
    pretrained: a shipped optimizer (``lopt.pretrained.names()``) to evaluate instead of a workdir's; then
      ``out_dir`` is needed.
    protocols: ``hparam_free`` and/or ``tuned`` (``scoring.evaluate_suite``).
    horizons: multiples of ``num_steps`` to evaluate at; 1x is written to ``out_dir``, h to
      ``out_dir/horizon_<h>x``.
    baseline_cache: a directory of cached baseline results, or None for none (``baseline_cache.resolve`` turns
      the command line's value and ``$LOPT_BASELINE_CACHE`` into one).

  Returns:
    An ``Evaluation``.
  """
  if workdir is None and out_dir is None:
    raise ValueError("Give a workdir (a meta_train run) and/or an out_dir (for a baselines-only or a pretrained "
                     "evaluation).")
  if workdir is not None and pretrained is not None:
    raise ValueError("Give a workdir or a pretrained name, not both.")
  protocols = scoring.check_protocols(protocols)
  horizons = check_horizons(horizons)
  if tensorboard not in TENSORBOARD_CHOICES:
    raise ValueError(f"tensorboard must be one of {', '.join(TENSORBOARD_CHOICES)}, got {tensorboard!r}.")
  learned = _load(workdir, step, trust_unverified, printer) if workdir else None
  shipped = lopt_pretrained.load(pretrained) if pretrained else None
  chosen_suite = suites.get_suite(suite)
  settings = suites.SUITE_SETTINGS.get(suite, {})
  num_steps = num_steps or settings.get("num_steps", DEFAULT_NUM_STEPS)
  num_seeds = num_seeds or settings.get("num_seeds", DEFAULT_NUM_SEEDS)
  chosen_baselines = tuned_baselines.default_baselines(names=baselines)
  out_dir = out_dir or Workdir(workdir).evaluation
  checkpoints.ensure_writable_dir(out_dir)
  from lopt.evaluation import plots  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  # fail early
  writer = writers.create_default_writers(out_dir, wandb_mode=wandb_mode,
                                          config_text=learned.config_text if learned else None,
                                          tensorboard=TENSORBOARD_CHOICES[tensorboard])
  try:
    name = f"{learned.architecture.name} (step {learned.step})" if learned else "learned"
    make = (lambda n: learned.optimizer(num_steps=n)) if learned else None
    if shipped is not None:
      name, make = f"pretrained {shipped.name}", (lambda n: shipped.optimizer(num_steps=n))
    printer(f"Evaluating {name if make else 'baselines only'} on suite '{suite}' (protocols {', '.join(protocols)}, "
            f"horizons {', '.join(f'{h}x' for h in horizons)}) -> {out_dir}")
    reports, all_paths = {}, {}
    for horizon in horizons:
      report = scoring.evaluate_suite(
          chosen_suite, baselines=chosen_baselines, learned_name=name, learned=make, num_steps=num_steps * horizon,
          learned_valid_every=training.valid_every_for(learned.architecture) if learned else 0,
          protocols=protocols, num_seeds=num_seeds, seed=seed, baseline_steps_factor=baseline_steps_factor,
          eval_every=eval_every, compiler_options=training.FAST_COMPILE if fast_compile else None,
          baseline_cache=baseline_cache, printer=printer)
      report.update(suite=suite, workdir=workdir, checkpoint_step=learned.step if learned else None,
                    pretrained=pretrained, horizon=horizon)
      reports[horizon] = report
      all_paths[horizon] = report_lib.write_report(report, horizon_dir(out_dir, horizon))
    report_lib.track_report(writer, reports[horizons[0]], all_paths[horizons[0]],
                            step=learned.step if learned else 0)
  finally:
    writer.close()
  for horizon in horizons:
    printer(f"## Horizon {horizon}x ({reports[horizon]['num_steps']} steps)\n")
    printer(report_lib.format_markdown(reports[horizon]))
  printer(summary(reports))
  printer("Wrote " + ", ".join(p for paths in all_paths.values() for p in paths.values()))
  return Evaluation(report=reports[horizons[0]], paths=all_paths[horizons[0]], out_dir=os.path.abspath(out_dir),
                    reports=reports)


def summary(reports: dict[int, dict[str, Any]]) -> str:
  """Per horizon: the headline of each protocol and the wall time of the candidate and of the baselines."""
  lines = ["Summary"]
  for horizon, report in reports.items():
    cache = report.get("baseline_cache")
    cached = f", baseline cache {cache['hits']} hits / {cache['misses']} misses" if cache else ", no baseline cache"
    lines.append(f"- {horizon}x ({report['num_steps']} steps): candidate {report['seconds_learned']:.1f} s, "
                 f"baselines {report['seconds_baselines']:.1f} s{cached}")
    lines += [f"  - {line}" for line in headline_lib.format_headline(report.get("headline", {})).splitlines()]
  return "\n".join(lines)
