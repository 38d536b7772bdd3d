"""Fleet simulator: many real agents in one asyncio process, each behind a
simulated network link, talking real HTTP to a real registry.

Pieces, from the bottom up:

- ``link``      a simulated cellular link as an httpx transport wrapper (bandwidth, latency, drops, dead zones).
- ``fleet``     who is in the fleet (pure, seeded): device ids, tags, network mix; poll and camera pacing.
- ``car``       one car: the real ``Agent`` with observation points, its link, its camera loop; sessions
                and identical slot files shared per SHA-256 inside the process.
- ``runner``    ``Fleet``: start, watch (``snapshot``, ``settled``), ``summary``, stop.
- ``stats``     per-profile rows and the ``--json`` object (pure).
- ``display``   the rich live view and the final tables.
- ``registry_admin``  the few admin calls a rehearsal makes, over HTTP (never imports ``server``).
- ``badmodel``  an honestly bad model (unseeded noise: no car can reproduce its outputs).
- ``story``     the ``ota demo`` rehearsal: v1, then staged rollouts of v2..v5 and the bad one.
"""
