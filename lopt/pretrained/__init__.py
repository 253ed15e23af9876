"""Meta-trained optimizers shipped inside the package: no download, checksums verified on load.

    import lopt
    lopt.pretrained.names()                                   # ['ff_v1', ...]
    tx = lopt.pretrained.optimizer("ff_v1", num_steps=1000)   # an optax transformation
    updates, state = tx.update(grads, state, params)          # ``loss=`` may be passed too

Each optimizer is one weights file (theta serialised with ``flax.serialization``) next to this module, listed in
``manifest.json`` with its architecture (a registered ``architecture`` plugin and its keyword arguments), the
sha256 of the weights file and where it came from. ``load`` checks the file against the manifest's checksum and
theta against the architecture's shapes before anything is returned. The model cards are in docs/pretrained.md.
"""

from lopt.pretrained.store import (MANIFEST, PACKAGE_DIR, Pretrained, PretrainedError, load, names, optimizer,
                                   save)

__all__ = ["MANIFEST", "PACKAGE_DIR", "Pretrained", "PretrainedError", "load", "names", "optimizer", "save"]
