"""Render a Kustomize overlay in Python: what `kubectl kustomize overlays/h100` prints, for the overlays
trtbuild writes, on machines without kubectl (tests, CI).

Only the features those overlays use are implemented: `resources` (files and one base directory), `patches`
with a strategic-merge patch file targeting a resource by kind and name, and `images` (newName / newTag /
digest). Strategic merge follows Kubernetes' rules for the fields we patch: maps merge recursively, lists
of objects merge by their patchMergeKey (containers and volumes by name, volumeMounts by mountPath, ports
by containerPort), other lists are replaced. Anything else in a kustomization is refused rather than
rendered wrongly; tests/test_deploy.py checks this rendering against `kubectl kustomize` where kubectl exists.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from trtbuild.deploy.kube import split_image
from trtbuild.errors import TrtbuildError

MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}
SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images"}


def render(directory: str | Path) -> list[dict]:
    """The resources a kustomization directory builds, in kustomize's output order (resources order)."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise TrtbuildError(f"{directory}/kustomization.yaml uses {', '.join(sorted(unknown))}, which this renderer "
                            "does not implement; render it with `kubectl kustomize`")
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs += render(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for patch_entry in kustomization.get("patches", []):
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        target = _find(docs, patch["kind"], patch["metadata"]["name"])
        merged = strategic_merge(target, patch)
        docs[docs.index(target)] = merged
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                container["image"] = _retag(container["image"], image)
    return docs


def _find(docs: list[dict], kind: str, name: str) -> dict:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise TrtbuildError(f"patch target {kind}/{name} is not among the resources")


def strategic_merge(original, patch, key: str | None = None):
    if isinstance(original, dict) and isinstance(patch, dict):
        out = copy.deepcopy(original)
        for k, v in patch.items():
            out[k] = strategic_merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(original, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out, added = copy.deepcopy(original), []
        for item in patch:
            match = next((i for i, o in enumerate(out) if o.get(merge_key) == item.get(merge_key)), None)
            if match is None:
                added.append(copy.deepcopy(item))
            else:
                out[match] = strategic_merge(out[match], item)
        return added + out  # kustomize (kyaml) puts elements new to the list first
    return copy.deepcopy(patch)


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _retag(ref: str, image: dict) -> str:
    name, tag, digest = split_image(ref)
    if name != image["name"]:
        return ref
    name = image.get("newName", name)
    if image.get("digest"):
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    return f"{name}:{tag}" if tag else name
