"""Past one process: engine archives (export/import), Kubernetes manifests (Kustomize base + overlays),
an HAProxy configuration for replicas on plain hosts, and the Grafana dashboard + Prometheus alert rules
for the server's /metrics. docs/deploy.md walks through them command by command.

Modules: archive (export/import), kube (manifests as plain dicts), overlay (Kustomize patches, rendered in
Python), haproxy (load-balancer config), observe (dashboard, alerts), bundle (every file `trtbuild deploy`
writes), write (YAML out, atomically).
"""
