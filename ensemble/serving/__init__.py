"""A run answering requests: the web service, its upload page, the MLflow model, the answers."""
