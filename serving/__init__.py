"""TF-Serving-facing tools. Talks to a SavedModel or a REST endpoint, never to training code."""
