"""Signal processing in stock TensorFlow ops, shared by training and every export: preprocessing (filters and
standardization), in-graph resampling and training augmentation. Imports nothing else of ecg_tfx."""
