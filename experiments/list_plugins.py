"""Lists every registered plugin: kind, name, meta-parameter count (architectures) and a one-line description.

  python experiments/list_plugins.py
"""

from absl import app

import lopt


def main(argv):
  del argv
  print(lopt.config.plugin_listing())


if __name__ == "__main__":
  app.run(main)
