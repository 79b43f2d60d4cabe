"""Shared building blocks every stage uses: version shims for the two tested TensorFlow stacks."""
