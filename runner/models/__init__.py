"""Model sources: hub ids, local checkpoints and synthetic checkpoints kept in one store."""
