# Private to this collection: Equinix Metal (packet-python): client, engine and discovery.
