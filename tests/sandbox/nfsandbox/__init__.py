"""nfsandbox: the local cloud of nixforge.images (builder hosts, apt proxy, emulated providers).

Start with README.md next to this package; `sandboxctl` is the entry point.
"""
