"""Feedback from people on served predictions, kept as an append-only Parquet dataset."""
