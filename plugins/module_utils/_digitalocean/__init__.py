# Private to this collection: DigitalOcean helpers of the modules; no stable interface.
