"""Live engineer sessions: the registry, the recorder and the session journal."""
