"""Running on the reactor: installing it, the asyncio bridge, once-per-turn work, the lag
probe and the C allocator's thresholds."""
