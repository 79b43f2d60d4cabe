"""From records to batches: sources (PTB, PTB-XL, synthetic), the per-record transform, patient-wise splits,
shards, the local and Beam converters, and the tf.data input pipeline."""
