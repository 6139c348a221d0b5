"""Data: tasks (the embedded toy summarisation oracle), preference-file readers and grain pipelines."""
