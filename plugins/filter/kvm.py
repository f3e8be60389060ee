# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a builder type offers hardware virtualisation (/dev/kvm).

DigitalOcean images are built by nixpkgs' make-disk-image, which runs a VM and needs the
Nix system feature `kvm`. These filters let a playbook refuse a builder without it before
anything is created (documentation: kvm_capable.yml, without_kvm.yml next to this file).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible.errors import AnsibleFilterError
from ansible_collections.nixforge.images.plugins.module_utils._ec2._nested import kvm_kind

PROVIDERS = ("ec2", "metal", "ssh")


def ec2_kvm(instance_type: str, nested_virtualization: bool = True) -> bool:
    """`*.metal` and `*.metal-<size>` types are bare metal; C8i/M8i/R8i and their flex
    variants have KVM with the nested virtualisation CPU option (ec2_spot_host's
    nested_virtualization, which the DigitalOcean pipeline sets); every other type has none."""
    return kvm_kind(instance_type, nested_virtualization) is not None


def kvm_capable(value: Any, provider: str = "ec2", nested_virtualization: bool = True) -> Optional[bool]:
    """True/False for an EC2 instance type or a Metal plan; None for the ssh provider,
    whose host can only be checked after logging in (/dev/kvm)."""
    if provider not in PROVIDERS:
        raise AnsibleFilterError(
            "kvm_capable: unknown provider %r (expected one of %s)" % (provider, ", ".join(PROVIDERS))
        )
    if provider == "ssh":
        return None
    if not isinstance(value, str) or not value.strip():
        raise AnsibleFilterError("kvm_capable: expected an instance type or plan name, got %r" % (value,))
    if provider == "metal":
        # Every Metal plan is a whole physical server; a compatible endpoint whose catalogue
        # says otherwise is caught by metal_device's require_kvm.
        return True
    return ec2_kvm(value, bool(nested_virtualization))


def without_kvm(values: Any, provider: str = "ec2", nested_virtualization: bool = True) -> List[str]:
    """The types of a list (or a single type) that have no KVM, in their order."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise AnsibleFilterError("without_kvm: expected a list of instance types or plans, got %r" % (values,))
    return [str(v) for v in values if kvm_capable(str(v), provider, nested_virtualization) is False]


class FilterModule:
    def filters(self) -> Dict[str, Any]:
        return {"kvm_capable": kvm_capable, "without_kvm": without_kvm}
