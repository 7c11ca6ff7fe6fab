"""Public data artifacts: what bench can fetch, and getting it onto disk verified (driver only).

One module per concern, in the order a fetch goes through them:

- :mod:`bench.artifacts.catalogue`: the artifacts (URL, size, checksums): ``Catalogue``, ``default_catalogue``;
- :mod:`bench.artifacts.policy`: the network policy: ``offline_mode`` (``BENCH_OFFLINE``), ``mirror_url``
  (``BENCH_MIRROR``), ``FetchOptions``;
- :mod:`bench.artifacts.layout`: where artifacts live in the data directory, and ``inspect`` (what is
  there and verified);
- :mod:`bench.artifacts.download`: one verified download (staging file, checksum, atomic rename, retries);
- :mod:`bench.artifacts.cifar10_files`: unpacking the CIFAR-10 release and ``cifar10_test.npz``;
- :mod:`bench.artifacts.install`: ``install`` / ``fetch`` (lock, download, unpack), ``require_offline``;
- :mod:`bench.artifacts.job`: what a job reads (``job_needs``) and ``prepare`` before submission.

Nothing is imported here: a caller imports the module it needs (the policy alone is cheap).
"""
