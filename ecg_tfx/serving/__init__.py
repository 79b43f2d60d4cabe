"""Serving: SavedModel and TFLite export, predictors for files, the TF-Serving-compatible REST server and a client."""
