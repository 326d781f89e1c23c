"""Retrieval library (no Lightning): BEIR I/O, BM25, encoders, faiss, losses, metrics."""
