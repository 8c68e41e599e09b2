"""Generated CUB-layout birds: species with known parts, drawn procedurally (no downloads)."""
