"""TF Serving's gRPC API (PredictionService, ModelService) for our exports, beside the REST one in `rest/`."""
