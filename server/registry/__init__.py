"""Model lines, versions, packages, their storage (deltas with keyframes) and artifact downloads."""
