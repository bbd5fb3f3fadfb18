"""Every etcd key and prefix the mesh uses. Nothing else formats key strings.

Layout under the root prefix (e.g. ``/mm/default/``), see docs/architecture.md:

    registry/<modelId>       ModelRecord      owner: mesh.cluster.registry
    instances/<instanceId>   InstanceRecord   owner: mesh.cluster.instances (own record only, on the lease)
    vmodels/<vModelId>       VModelRecord     owner: mesh.cluster.vmodels
    leader                   election key     owner: mesh.kv.election
    config/<name>            dynamic config   owner: operators (read by mesh.cluster.dynconfig)
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.ids import check_id


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one mesh cluster. ``root`` always ends with ``/``."""

    root: str

    @classmethod
    def for_root(cls, root: str) -> Keys:
        root = root.strip() or "/mm/default/"
        if not root.startswith("/"):
            root = "/" + root
        if not root.endswith("/"):
            root += "/"
        return cls(root)

    @property
    def registry_prefix(self) -> str:
        return self.root + "registry/"

    @property
    def instances_prefix(self) -> str:
        return self.root + "instances/"

    @property
    def vmodels_prefix(self) -> str:
        return self.root + "vmodels/"

    @property
    def config_prefix(self) -> str:
        return self.root + "config/"

    @property
    def leader(self) -> str:
        return self.root + "leader"

    def registry(self, model_id: str) -> str:
        return self.registry_prefix + check_id(model_id, what="model id")

    def instance(self, instance_id: str) -> str:
        return self.instances_prefix + check_id(instance_id, what="instance id")

    def vmodel(self, vmodel_id: str) -> str:
        return self.vmodels_prefix + check_id(vmodel_id, what="vmodel id")

    def config(self, name: str) -> str:
        return self.config_prefix + check_id(name, what="config name")

    @staticmethod
    def in_prefix(prefix: str, id: str) -> str:
        """The key of ``id`` under one of this class's prefixes (what ``kv.table.Table`` uses)."""
        return prefix + check_id(id, what="id")

    @staticmethod
    def id_from(prefix: str, key: str) -> str:
        """The id part of ``key`` under ``prefix`` (keys are only ever built by this class)."""
        return key[len(prefix) :]
