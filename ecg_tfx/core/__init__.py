"""Shared types and I/O every stage uses: records and leads, label presets, the TFRecord schema, storage on any
filesystem, the manifest of a conversion, the ModelSpec of a trained model and the layout of a run folder, and
the shims for what differs between the two tested stacks (`compat`)."""
