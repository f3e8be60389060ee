# Private to this collection: the module base, identity, errors, retries, waits and what every provider shares.
