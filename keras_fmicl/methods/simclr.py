"""SimCLR: in-batch negatives, every view an anchor."""

from __future__ import annotations

from typing import ClassVar

import keras

from keras_fmicl.methods.method import METHODS
from keras_fmicl.methods.method import Method
from keras_fmicl.utils.registry import PACKAGE


@METHODS.register()
@keras.saving.register_keras_serializable(package=PACKAGE)
class SimCLR(Method):
    """SimCLR: the views of a batch contrasted with each other.

    Query `(i, v)` has positives the other views of sample `i` and
    negatives every view of the other samples of the batch (the global
    batch under data parallelism). No key network, no state.

    Example:

    ```python
    model = keras_fmicl.ContrastiveModel(
        encoder, method=keras_fmicl.methods.SimCLR(),
        projector=keras_fmicl.ProjectionHead(256, 64), augmenter=augmenter)
    ```

    Reference:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for
        Contrastive Learning of Visual Representations", ICML 2020.
    """

    mode: ClassVar[str] = "simclr"
