"""Evaluates a meta-trained optimizer against tuned optax baselines on a suite of tasks (VeLO-style speed-ups).

  python experiments/evaluate.py --workdir=/tmp/lopt_quickstart
  python experiments/evaluate.py --pretrained=ff_v1 --suite=heldout --out_dir=/tmp/lopt_ff_v1_heldout
  python experiments/evaluate.py --pretrained=ff_v1 --suite=validation --horizons=1,10 --out_dir=/tmp/ff_v1_val

Writes evaluation.json, evaluation.md and PNG figures to --out_dir (default <workdir>/evaluation), and for every
horizon h other than 1 the same into <out_dir>/horizon_<h>x; logs the scalars and figures to metrics.jsonl, wandb
(offline by default) and TensorBoard (when installed). Tuned baselines are cached in --baseline_cache (default
$LOPT_BASELINE_CACHE or ~/.cache/lopt/baselines), so a second candidate trains only itself. docs/evaluation.md
explains the output. Without --workdir only the baselines are evaluated.
"""

from absl import app, flags

import lopt
from lopt import compilation_cache, runs, writers
from lopt.evaluation import baseline_cache, scoring

_WORKDIR = flags.DEFINE_string("workdir", None, "meta_train workdir of the learned optimizer (config.gin, checkpoints)")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the newest that verifies (a "
                             "truncated or corrupt newer one is skipped, and the output says so).", lower_bound=0)
_TRUST = flags.DEFINE_bool("trust_unverified_checkpoint", False, "Evaluate a checkpoint whose checksum sidecar "
                           "(checkpoint_<step>.json) is missing instead of refusing it.")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "A shipped optimizer (lopt.pretrained.names()) to evaluate "
                                  "instead of --workdir; needs --out_dir.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory; default <workdir>/evaluation.")
_SUITE = flags.DEFINE_enum("suite", "default", lopt.registry.names("eval_suite"), "Evaluation suite (registry kind "
                           "eval_suite, lopt/evaluation/suites.py).")
_BASELINES = flags.DEFINE_list("baselines", None, "Baselines to run; default all (lopt/evaluation/tuned_baselines.py).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Inner steps of the learned optimizer per task; default the "
                                   "suite's (heldout: 1000) or 200.", lower_bound=2)
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", None, "Tasks (seeds) per suite entry; default the suite's (heldout: 3) "
                                  "or 4.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Selects the held-out tasks.", lower_bound=0)
_FACTOR = flags.DEFINE_integer("baseline_steps_factor", 2, "Baselines train this many times longer.", lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None, "Steps between test losses; default num_steps // 10.",
                                   lower_bound=1)
_PROTOCOLS = flags.DEFINE_list("protocols", list(scoring.PROTOCOLS), "hparam_free (the optimizer as given) and/or "
                                "tuned (its update times a per-task multiplier from scoring.MULTIPLIERS).")
_HORIZONS = flags.DEFINE_list("horizons", ["1"], "Multiples of the suite's default steps to evaluate at, e.g. 1,10; 1x "
                              "goes to --out_dir, h to <out_dir>/horizon_<h>x.")
_BASELINE_CACHE = flags.DEFINE_string("baseline_cache", None, "Directory of cached baseline results; default "
                                      "$LOPT_BASELINE_CACHE, else ~/.cache/lopt/baselines; '' or 'off' disables it.")
_FAST_COMPILE = flags.DEFINE_bool("fast_compile", False, "Faster XLA compiles, slower steps (training.FAST_COMPILE).")
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "offline", list(writers.WANDB_MODES), "wandb mode.")
_COMPILATION_CACHE = flags.DEFINE_string("compilation_cache", None, compilation_cache.FLAG_HELP)
_TENSORBOARD = flags.DEFINE_enum("tensorboard", "auto", ["auto", "on", "off"],
                                 "TensorBoard event files: auto writes them when the [tensorboard] extra is installed.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None and _OUT_DIR.value is None:
    raise app.UsageError("Give --workdir (a meta_train run) and/or --out_dir (for a baselines-only or --pretrained "
                         "evaluation).")
  if _WORKDIR.value is not None and _PRETRAINED.value is not None:
    raise app.UsageError("Give --workdir or --pretrained, not both.")
  with runs.user_errors():
    compilation_cache.enable(_COMPILATION_CACHE.value)
    runs.evaluate_workdir(_WORKDIR.value, step=_STEP.value, out_dir=_OUT_DIR.value, suite=_SUITE.value,
                          baselines=_BASELINES.value, num_steps=_NUM_STEPS.value, num_seeds=_NUM_SEEDS.value,
                          seed=_SEED.value, baseline_steps_factor=_FACTOR.value, eval_every=_EVAL_EVERY.value,
                          fast_compile=_FAST_COMPILE.value, wandb_mode=_WANDB_MODE.value,
                          tensorboard=_TENSORBOARD.value, trust_unverified=_TRUST.value,
                          printer=lambda line: print(line, flush=True), pretrained=_PRETRAINED.value,
                          protocols=_PROTOCOLS.value, horizons=_HORIZONS.value,
                          baseline_cache=baseline_cache.resolve(_BASELINE_CACHE.value))


if __name__ == "__main__":
  app.run(main)
