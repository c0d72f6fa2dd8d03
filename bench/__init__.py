"""`make bench`: csvgen's speed and memory, measured against a pandas baseline."""
