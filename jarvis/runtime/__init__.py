"""Running on the reactor: installing it, the asyncio bridge, once-per-turn work and the lag
probe."""
