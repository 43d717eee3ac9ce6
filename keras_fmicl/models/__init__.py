"""`ContrastiveModel` and its training diagnostics."""

from keras_fmicl.models import contrastive_model
from keras_fmicl.models import diagnostics
from keras_fmicl.models.contrastive_model import ContrastiveModel
from keras_fmicl.models.diagnostics import PositivesDriftMonitor
from keras_fmicl.models.diagnostics import PositivesDriftWarning
from keras_fmicl.models.diagnostics import drifting_epochs
from keras_fmicl.models.diagnostics import failing_epochs
from keras_fmicl.models.diagnostics import relative_alignment
