"""Service functions: one use case each, called by a thin Lambda handler or API route."""
