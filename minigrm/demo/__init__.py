"""The demo world: a synthetic reward-modeling task and a tiny model trained by minigrm itself."""
