"""The advisor: turns state digests into advice from one or more LLMs."""
