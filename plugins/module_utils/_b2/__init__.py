# Private to this collection: Backblaze B2 (b2sdk): client, upload engine, transport and discovery.
