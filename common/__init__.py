"""What both sides of meshpeer share: the vocabulary of keys and endpoints, the error family,
the join contract (tokens, proofs, the TLS pin) and the console conventions."""
