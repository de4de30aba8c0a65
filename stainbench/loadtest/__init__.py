"""Load tests of served models with Locust, in three layers.

- :mod:`.payload` and :mod:`.client`: request bodies built once per tile batch with
  tritonclient's helpers, and the HTTP / gRPC calls that check each answer (no Locust here);
- :mod:`.users`: the Locust users (an abstract user that times with ``perf_counter`` and fires
  Locust's request event itself, an HTTP user on ``FastHttpUser`` and a gRPC user);
- :mod:`.runner`: what ``stainbench loadtest`` calls: validation, the embedded server, Locust
  in separate processes, and the summary parsed from Locust's CSV (:mod:`.stats`).

Only :mod:`.users` imports Locust (gevent): it runs in Locust's own process, never in the CLI
process, because Locust's monkey patching breaks zarr's asyncio calls.
"""
