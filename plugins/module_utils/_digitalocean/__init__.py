# Private to this collection: DigitalOcean (python-digitalocean): client, image engine, droplets, keys, discovery.
