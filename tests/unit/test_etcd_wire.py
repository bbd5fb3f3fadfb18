"""Our etcd stubs (protos/etcd, restated from etcd's API definitions) against wire facts recorded from an
independent generation of etcd's own .proto files (the aetcd 1.0 package's stubs, before we dropped it):
service and method names, streaming, request/response types, message field numbers, types and labels, enum
values. Any drift would break talking to a real etcd, so this fails on it without needing one."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import descriptor_pb2

FACTS = Path(__file__).resolve().parents[1] / "support" / "etcd_wire_facts.json"


def wire_facts(file_descriptor) -> dict:
    out: dict = {"services": {}, "messages": {}, "enums": {}}
    seen: set[str] = set()

    def message(pkg: str, m, prefix: str) -> None:
        name = f"{pkg}.{prefix}{m.name}"
        out["messages"][name] = {
            f.name: [f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1]] for f in m.field
        }
        for n in m.nested_type:
            message(pkg, n, f"{prefix}{m.name}.")
        for e in m.enum_type:
            out["enums"][f"{name}.{e.name}"] = {v.name: v.number for v in e.value}

    def walk(fd) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            walk(dep)
        p = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(p)
        for s in p.service:
            out["services"][f"{p.package}.{s.name}"] = {
                m.name: [
                    m.input_type.rsplit(".", 1)[-1],
                    m.output_type.rsplit(".", 1)[-1],
                    m.client_streaming,
                    m.server_streaming,
                ]
                for m in s.method
            }
        for m in p.message_type:
            message(p.package, m, "")
        for e in p.enum_type:
            out["enums"][f"{p.package}.{e.name}"] = {v.name: v.number for v in e.value}

    walk(file_descriptor)
    return out


def test_etcd_stubs_match_the_recorded_wire_facts() -> None:
    from protos.etcd.etcdserverpb import rpc_pb2

    ours = wire_facts(rpc_pb2.DESCRIPTOR)
    recorded = json.loads(FACTS.read_text())
    assert ours == recorded
    assert set(ours["services"]) == {
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Auth",
    }
