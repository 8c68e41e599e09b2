"""CUB-200-2011 reading, generation and ingest."""
