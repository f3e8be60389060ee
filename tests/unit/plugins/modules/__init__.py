# Package marker: lets pytest import unit tests whose basenames match integration tests
# (tests/unit/plugins/modules/test_metal_device.py vs tests/integration/test_metal_device.py).
