"""Fleet simulator: many real agents in one asyncio process, each behind a
simulated network link, talking real HTTP to a real registry."""
