"""Transfer accounting: bytes the server actually wrote, per device, rollout, stage and artifact."""
