"""ecg_tfx: electrocardiograms from WFDB recording to deployed TensorFlow model."""

__version__ = "0.1.0"
