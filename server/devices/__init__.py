"""Devices: enrollment, authentication, polls (signed offers), reports, inventory, drift."""
