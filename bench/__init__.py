"""Load and latency benchmarks of ``Authorize``, side by side with a no-op baseline.

``python -m bench`` (``make bench``) starts the real server and a baseline
server whose ``Authorize`` servicer answers a constant ``CheckResponse`` on
the same stack (``bench.serve``), drives them with h2load (``bench.h2``) and
``apikeys loadtest``, sets the caching clients against the plain ones and
measures what their watchers cost the server and how fast a change on
another replica reaches them (``bench.caching``), measures the key cache's
memory (``bench.memory``) and profiles the hot path (``bench.profile``),
then prints one table.
"""
