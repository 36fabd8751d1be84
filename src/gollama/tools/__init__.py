"""The tools around the servers: the demo, the load test, the chaos run, the fault proxy, the
test model, and the one local-cluster launcher they (and the benchmarks and tests) share.
Nothing the hub or the worker imports lives here."""
