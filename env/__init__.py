"""The world the router learns in: routing datasets, SBERT embeddings with a disk cache, PromptEnv."""
