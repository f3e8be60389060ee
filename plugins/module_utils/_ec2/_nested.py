# -*- coding: utf-8 -*-
# Private to this collection: EC2 nested virtualization (KVM without bare metal); no stable interface.
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which EC2 instance types give a builder ``/dev/kvm``, and how to ask for it.

Facts (docs/build-do-image.md, "KVM builders without bare metal", has the sources):
- EC2 offers nested virtualization on 8th-generation Intel types, C8i, M8i, R8i and their
  flex variants (EC2's own type data lists 7th-generation Intel families too), through the
  CPU option ``CpuOptions.NestedVirtualization=enabled`` of RunInstances and of launch
  templates; it is off by default.
- ``DescribeInstanceTypes`` lists ``nested-virtualization`` in a type's
  ``ProcessorInfo.SupportedFeatures`` when the type supports it. That answer wins over the
  catalogue below, which is only used when EC2's answer lacks the field (EC2-compatible
  APIs) and for the suggestions of an error message.
- Bare-metal types (``*.metal``, ``*.metal-<size>``) have hardware virtualisation without
  any option; EC2 refuses the option for them, as for every type without support.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError

FEATURE = "nested-virtualization"
# families with the nested virtualization CPU option: AWS's API reference names C8i, M8i, R8i
# and their flex variants; DescribeInstanceTypes (as of 2026-12, the data moto 5.2.5 ships)
# also lists the 7th-generation Intel families and the 8th-generation -d/x8i ones
NESTED_FAMILIES = (
    "c8i",
    "c8i-flex",
    "m8i",
    "m8i-flex",
    "r8i",
    "r8i-flex",
    "c8id",
    "m8id",
    "r8id",
    "x8i",
    "c7i",
    "c7i-flex",
    "m7i",
    "m7i-flex",
    "r7i",
    "r7iz",
    "i7i",
    "i7ie",
)
# what a refusal suggests first, for a type of the same size
SUGGESTED_FAMILIES = ("c8i", "m8i", "r8i")
DEFAULT_SIZE = "2xlarge"
NESTED_CPU_OPTIONS = {"NestedVirtualization": "enabled"}


def split_type(instance_type: str) -> Tuple[str, str]:
    """``('c8i-flex', '2xlarge')`` for ``c8i-flex.2xlarge``; lower case, stripped."""
    family, _dot, size = str(instance_type).strip().lower().partition(".")
    return family, size


def is_bare_metal(instance_type: str) -> bool:
    family, size = split_type(instance_type)
    return bool(family) and (size == "metal" or size.startswith("metal-"))


def catalogue_supports(instance_type: str) -> bool:
    """Whether the collection's catalogue lists ``instance_type`` as nested-virtualization capable."""
    family, size = split_type(instance_type)
    return family in NESTED_FAMILIES and bool(size) and not is_bare_metal(instance_type)


def kvm_kind(instance_type: str, nested_virtualization: bool) -> Optional[str]:
    """``'bare-metal'``, ``'nested'`` (only when the option is asked for) or None (no /dev/kvm)."""
    if is_bare_metal(instance_type):
        return "bare-metal"
    if nested_virtualization and catalogue_supports(instance_type):
        return "nested"
    return None


def described_support(described: Mapping[str, Any]) -> Optional[bool]:
    """What a DescribeInstanceTypes entry says about nested virtualization; None when it
    has no ``SupportedFeatures`` at all (an API that predates the field)."""
    features = (described.get("ProcessorInfo") or {}).get("SupportedFeatures")
    if features is None:
        return None
    return FEATURE in features


def suggestions(refused: Iterable[str]) -> List[str]:
    """Nested-virtualization types of the sizes of ``refused`` (2xlarge when a size has none)."""
    sizes = []
    for instance_type in refused:
        _family, size = split_type(instance_type)
        if not size or size.startswith("metal") or size in ("nano", "micro", "small", "medium"):
            size = DEFAULT_SIZE
        if size not in sizes:
            sizes.append(size)
    return ["%s.%s" % (family, size) for size in sizes for family in SUGGESTED_FAMILIES]


def classify(instance_types: List[str], described: Mapping[str, Mapping[str, Any]]) -> Dict[str, str]:
    """``{type: 'nested' | 'bare-metal'}`` for ``nested_virtualization: true``; refuses
    (``UserInputError``) every type that can give no /dev/kvm, before anything is created."""
    kinds: Dict[str, str] = {}
    refused = []
    for instance_type in instance_types:
        entry = described.get(instance_type) or {}
        support = described_support(entry)
        if support is None:
            support = catalogue_supports(instance_type)
        if entry.get("BareMetal") or is_bare_metal(instance_type):
            kinds[instance_type] = "bare-metal"
        elif support:
            kinds[instance_type] = "nested"
        else:
            refused.append(instance_type)
    if refused:
        raise UserInputError(
            "%s support%s no nested virtualization: EC2 offers it on Intel types such as C8i, M8i, R8i and their "
            "flex variants (DescribeInstanceTypes lists 'nested-virtualization' for them)"
            % (", ".join(refused), "s" if len(refused) == 1 else ""),
            hint="Use types that do, for example %s (bare-metal *.metal types have KVM too), or set "
            "'nested_virtualization: false'. Nothing was created" % ", ".join(suggestions(refused)),
            parameter="instance_types",
        )
    return kinds


def template_groups(kinds: Mapping[str, str]) -> Dict[str, List[str]]:
    """Types by launch template: ``nested`` (with the CPU option) and ``plain`` (bare metal,
    where EC2 refuses the option); a group without types is left out."""
    groups: Dict[str, List[str]] = {}
    for instance_type, kind in kinds.items():
        groups.setdefault("nested" if kind == "nested" else "plain", []).append(instance_type)
    return groups


def instance_kvm(instance: Mapping[str, Any]) -> Dict[str, Any]:
    """``{kvm, nested_virtualization}`` of a described instance (its type and CPU options)."""
    nested = (instance.get("CpuOptions") or {}).get("NestedVirtualization") == "enabled"
    return {"kvm": nested or is_bare_metal(str(instance.get("InstanceType") or "")), "nested_virtualization": nested}
