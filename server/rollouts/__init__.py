"""Staged rollouts: a pure state machine, deterministic stage assignment, auto-advance and auto-halt."""
