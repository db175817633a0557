"""``python -m taskraft.conformance <scenario.json> --addrs host:port[,...]``."""

from taskraft.conformance.runner import main

main()
