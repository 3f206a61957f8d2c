"""VTHR — ViT Tree Heritage Recovery (MoTHer, Horwitz et al. ICLR 2025; spec ``model_trees.md`` §B.5).

The ground-truth Model Graphs ship as pickles ``dataset/{full_ft,lora_f,lora_v}_model_graph.pkl`` of the
classes ``model_graph.{ModelGraph,ModelGraphNode,ModelGraphNodeMetadata}`` (FT) and
``model_graph_lora.{LoRAModelGraph,LoRAModelGraphNode,LoRAModelGraphNodeMetadata}`` (LoRA). They are read with
``restricted_load`` and an allow-list of exactly those six classes (as state-holding stubs) — their code is never
imported or run. Graph: ``roots``; node: ``is_root``, ``is_leaf``, ``metadata``, ``children``, ``parent``;
metadata: ``component_id`` (tree), ``depth``, ``dataset_name``, ``num_classes``, ``dataset_short_name``,
``seed``, ``uuid``, ``model_path`` (hub repo id or a local folder) and, for LoRA graphs, ``lora_rank``.

Public API::

    g = load_vthr_graph("dataset/full_ft_model_graph.pkl")
    g.nodes        # [{"uuid", "tree", "depth", "parent" (uuid | None), "dataset_name", "num_classes",
                   #   "dataset_short_name", "seed", "model_path", "lora_rank"}], roots first, depth-first
    g.edges        # [(parent uuid, child uuid)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labkit.datasets import BenchmarkFormatError, require
from labkit.datasets.safe_pickle import restricted_load, stub
from labkit.safe_io import printable

__all__ = ["VTHR_CLASSES", "VthrGraph", "load_vthr_graph"]

VTHR_CLASSES = {f"{m}.{p}{n}": stub(m, f"{p}{n}")
                for m, p in (("model_graph", ""), ("model_graph_lora", "LoRA"))
                for n in ("ModelGraph", "ModelGraphNode", "ModelGraphNodeMetadata")}
_FIELDS = ("dataset_name", "num_classes", "dataset_short_name", "seed", "model_path")


@dataclass
class VthrGraph:
    """A VTHR Model Graph as plain data: node rows (roots first, depth-first) and directed parent→child edges."""

    nodes: list[dict]
    edges: list[tuple[str, str]]


def _node_row(node: object, where: str) -> dict:
    """One node as a plain row (uuid, tree, depth, parent uuid, metadata fields)."""
    meta = getattr(node, "metadata", None)
    uuid = getattr(meta, "uuid", None)
    if not isinstance(uuid, str):
        raise BenchmarkFormatError(f"{where}: a node without a string metadata.uuid; not a VTHR model graph")
    parent_uuid = getattr(getattr(getattr(node, "parent", None), "metadata", None), "uuid", None)
    return {"uuid": uuid, "tree": getattr(meta, "component_id", None), "depth": getattr(meta, "depth", None),
            "parent": parent_uuid if isinstance(parent_uuid, str) else None,
            **{f: getattr(meta, f, None) for f in _FIELDS}, "lora_rank": getattr(meta, "lora_rank", None)}


def load_vthr_graph(path: str | Path) -> VthrGraph:
    """Read a VTHR tree pickle safely into a ``VthrGraph``; every error is one line naming the file."""
    path = require(path, "VTHR tree pickle", None)
    where = printable(path)
    graph = restricted_load(path, VTHR_CLASSES)
    roots = getattr(graph, "roots", None)
    if not isinstance(roots, list) or not roots:
        raise BenchmarkFormatError(f"{where}: not a VTHR model graph (no 'roots' list)")
    nodes, edges, seen = [], [], set()
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        row = _node_row(node, where)
        if row["uuid"] in seen:
            continue
        seen.add(row["uuid"])
        if row["parent"] is not None:
            edges.append((row["parent"], row["uuid"]))
        nodes.append(row)
        children = getattr(node, "children", None) or []
        if not isinstance(children, list):
            raise BenchmarkFormatError(f"{where}: node {printable(row['uuid'])[:40]} has children of type "
                                       f"{type(children).__name__}, not a list; not a VTHR model graph")
        stack.extend(reversed(children))
    return VthrGraph(nodes, edges)
