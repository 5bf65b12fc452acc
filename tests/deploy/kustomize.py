"""`kustomize build` in miniature, for the manifest tests: just the features deploy/ uses.

Supported: `resources` (files and directories), `components` (kind Component), `namespace`,
`labels` (metadata labels only), `images` (`newName`, `newTag`, `digest`) and `patches` given
inline as JSON 6902 operations (`add`, `replace`, `remove`) with a `kind`/`name` target. Anything
else raises `Unsupported`, so a kustomization that outgrows this helper fails loudly instead of
rendering differently from the real tool. `test_manifests.py` compares the two where
`kubectl kustomize` is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "images",
    "patches",
}
# Kinds without a namespace among those deploy/ could use.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class Unsupported(Exception):
    """The kustomization uses a feature this helper does not render."""


def build(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would print (in accumulation order)."""
    kustomization = _kustomization(directory)
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise Unsupported(f"{directory}: build a Kustomization, not a {kustomization['kind']}")
    return _render(directory, kustomization, [])


def load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(directory: Path) -> Resource:
    document: Resource = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(document) - KUSTOMIZATION_KEYS
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)}")
    return document


def _render(directory: Path, kustomization: Resource, inherited: list[Resource]) -> list[Resource]:
    resources = list(inherited)
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += build(path) if path.is_dir() else load_documents(path)
    for entry in kustomization.get("components", []):
        path = (directory / entry).resolve()
        component = _kustomization(path)
        if component.get("kind") != "Component":
            raise Unsupported(f"{path}: components must be kind Component")
        resources = _render(path, component, resources)
    for patch in kustomization.get("patches", []):
        _patch(resources, patch)
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels", []):
        if (
            entry.get("includeSelectors")
            or entry.get("includeTemplates")
            or set(entry)
            - {
                "pairs",
                "includeSelectors",
                "includeTemplates",
            }
        ):
            raise Unsupported(f"{directory}: labels beyond metadata pairs")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                container["image"] = _retag(container["image"], image)
    return resources


def _patch(resources: list[Resource], patch: Resource) -> None:
    target = patch.get("target", {})
    if set(target) - {"kind", "name"} or "path" in patch:
        raise Unsupported(f"patch target {target} / path patches")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise Unsupported("only JSON 6902 patches (a list of operations)")
    matched = [
        r
        for r in resources
        if r["kind"] == target.get("kind", r["kind"])
        and r["metadata"]["name"] == target.get("name", r["metadata"]["name"])
    ]
    if not matched:
        raise Unsupported(f"patch target {target} matches nothing")
    for resource in matched:
        for operation in operations:
            _apply(resource, operation)


def _apply(document: Resource, operation: Resource) -> None:
    op = operation["op"]
    if op not in ("add", "replace", "remove"):
        raise Unsupported(f"JSON patch op {op}")
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        if op == "add":
            index = len(node) if last == "-" else int(last)
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[int(last)] = copy.deepcopy(operation["value"])
        else:
            del node[int(last)]
    elif op != "add" and last not in node:
        raise KeyError(f"{operation['path']} does not exist")  # the real patch fails too
    elif op == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(operation["value"])


def _containers(resource: Resource) -> list[Resource]:
    spec = resource.get("spec", {})
    if resource["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", spec if resource["kind"] == "Pod" else {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _retag(reference: str, image: Resource) -> str:
    name, tag, digest = _split_image(reference)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    suffix = f"@{digest}" if digest and "newTag" not in image else ""
    return f"{name}:{tag}{suffix}" if tag else f"{name}{suffix}"


def _split_image(reference: str) -> tuple[str, str | None, str | None]:
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None
