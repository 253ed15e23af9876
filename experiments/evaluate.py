"""Evaluates a meta-trained optimizer against tuned optax baselines on a suite of tasks (VeLO-style speed-ups).

  python experiments/evaluate.py --workdir=/tmp/lopt_quickstart

Writes evaluation.json, evaluation.md and PNG figures to --out_dir (default <workdir>/evaluation), logs the scalars
and figures to metrics.jsonl, wandb (offline by default) and TensorBoard (when installed). docs/evaluation.md
explains the output. Without --workdir only the baselines are evaluated.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lopt import checkpoints, comparison, eval_baselines, eval_suites, evaluation, trained, writers  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "meta_train workdir of the learned optimizer (config.gin, checkpoints)")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory; default <workdir>/evaluation.")
_SUITE = flags.DEFINE_enum("suite", "default", list(eval_suites.SUITES), "Evaluation suite (lopt/eval_suites.py).")
_BASELINES = flags.DEFINE_list("baselines", None, "Baselines to run; default all (lopt/eval_baselines.py).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 200, "Inner steps of the learned optimizer per task.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 4, "Tasks (seeds) per suite entry.")
_SEED = flags.DEFINE_integer("seed", 0, "Selects the held-out tasks.")
_FACTOR = flags.DEFINE_integer("baseline_steps_factor", 2, "Baselines train this many times longer.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None, "Steps between test losses; default num_steps // 10.")
_FAST_COMPILE = flags.DEFINE_bool("fast_compile", False, "Faster XLA compiles, slower steps (evaluation.FAST_COMPILE).")
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", list(writers.WANDB_MODES), "wandb mode.")
_TENSORBOARD = flags.DEFINE_enum("tensorboard", "auto", ["auto", "on", "off"],
                                 "TensorBoard event files: auto writes them when the [tensorboard] extra is installed.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    from lopt import plots  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    sys.exit(f"error: {e}")
  if _WORKDIR.value is None and _OUT_DIR.value is None:
    raise app.UsageError("Give --workdir (a meta_train run) and/or --out_dir (for a baselines-only evaluation).")
  try:
    learned = trained.load(_WORKDIR.value, step=_STEP.value) if _WORKDIR.value else None
    baselines = eval_baselines.default_baselines(names=_BASELINES.value)
    out_dir = _OUT_DIR.value or os.path.join(_WORKDIR.value, "evaluation")
    checkpoints.ensure_writable_dir(out_dir)
    writer = writers.create_default_writers(
        out_dir, wandb_mode=_WANDB_MODE.value, config_text=learned.config_text if learned else None,
        tensorboard={"auto": None, "on": True, "off": False}[_TENSORBOARD.value])
  except (ValueError, OSError, ImportError) as e:  # bad workdir, checkpoint, baseline name or output directory
    sys.exit(f"error: {e}")
  name = f"{learned.architecture.name} (step {learned.step})" if learned else "learned"
  print(f"Evaluating {name if learned else 'baselines only'} on suite '{_SUITE.value}' -> {out_dir}", flush=True)
  report = comparison.evaluate_suite(
      eval_suites.get_suite(_SUITE.value), baselines=baselines, learned_name=name,
      learned=(lambda n: learned.architecture.optimizer(learned.theta, num_steps=n)) if learned else None,
      num_steps=_NUM_STEPS.value, num_seeds=_NUM_SEEDS.value, seed=_SEED.value,
      baseline_steps_factor=_FACTOR.value, eval_every=_EVAL_EVERY.value,
      compiler_options=evaluation.FAST_COMPILE if _FAST_COMPILE.value else None,
      printer=lambda line: print(line, flush=True))
  report.update(suite=_SUITE.value, workdir=_WORKDIR.value, checkpoint_step=learned.step if learned else None)
  paths = comparison.write_report(report, out_dir)
  comparison.track_report(writer, report, paths, step=learned.step if learned else 0)
  writer.close()
  print(comparison.format_markdown(report))
  print("Wrote " + ", ".join(paths.values()), flush=True)


if __name__ == "__main__":
  app.run(main)
