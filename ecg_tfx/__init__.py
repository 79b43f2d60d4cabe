"""ecg_tfx: electrocardiograms from WFDB recording to deployed TensorFlow model."""

import os

# TensorFlow's C++ start-up chatter (CUDA stubs, CPU flags) hides our own messages; errors still raise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
