"""Offline stand-in for the get-pip.py bootstrap script ansible-test downloads.

ansible-test creates a bare virtualenv per sanity test and runs get-pip.py in it. That
script comes from a host CI machines cannot reach (ansible/ansible#77304), so `make sanity`
puts this file in ansible-test's cache instead: it installs the pip bundled with Python
(ensurepip) and then runs pip with the arguments ansible-test gave, which fetches the
requested pip version from the package registry like get-pip.py would.
"""

import subprocess
import sys

# In a child process: ensurepip points PIP_CONFIG_FILE at /dev/null in its own environment,
# and the pip run below must see the machine's pip configuration (index, certificates).
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
# --no-setuptools / --no-wheel are options of get-pip.py itself, not of pip.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
