"""Lists every registered plugin: kind, name, meta-parameter count (architectures) and a one-line description.

  python experiments/list_plugins.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from lopt import config, registry  # noqa: E402,F401  importing config registers every plugin.


def main(argv):
  del argv
  for kind, module in registry.KINDS.items():
    print(f"{kind} (gin: @{module}.NAME())")
    for name in registry.names(kind):
      extra = ""
      if kind == "architecture":
        extra = f" [{registry.lookup(kind, name)().num_meta_parameters()} meta-parameters]"
      print(f"  {name:<16} {registry.describe(kind, name)}{extra}")


if __name__ == "__main__":
  app.run(main)
