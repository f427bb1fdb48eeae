"""Kubernetes manifests for N replicas of `trtbuild serve`, as plain dicts (trtbuild.deploy.write makes YAML).

    settings = DeploySettings.for_engine(engine_dir, replicas=3, image="registry/trtbuild:0.1.0")
    base_resources(settings)            -> {"deployment.yaml": {...}, "service.yaml": {...}, ...}
    overlay_patches(settings, "h100")   -> the overlay's kustomization and patches

Each pod: an init container fetches the engine archive (`trtbuild export`) by URL and runs `trtbuild import`,
which checks the archive's sha256 and every artifact against the engine manifest; only then does the serve
container start, on the same emptyDir. Probes use NIM's /v1/health/live and /v1/health/ready; on SIGTERM the
server drains (readiness 503, still serving) before it closes its listener, so the Service stops routing
first. Serve settings travel as the TRTBUILD_* env vars `trtbuild serve` reads, from a ConfigMap; the API key
from a Secret the operator creates.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from trtbuild import __version__
from trtbuild.errors import TrtbuildError

PORT = 8000
ENGINES_MOUNT = "/engines"  # the workspace root inside the pod; engines land in /engines/engines/<name>
OVERLAYS = ("cpu-demo", "h100")
# queue depth: the engine's waiting requests, renamed by prometheus-adapter (':' is not allowed in the
# custom-metrics API); observe.ADAPTER_RULES makes that series from the server's /metrics
WAITING_METRIC = "trtbuild:num_requests_waiting"
HPA_METRIC = "trtbuild_num_requests_waiting"
# GPU feature discovery labels the node's GPU family; Hopper = H100/H200 (docs/deploy.md: pin a product)
HOPPER_SELECTOR = {"nvidia.com/gpu.family": "hopper"}
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 120  # 20 min: a 7B engine is hashed (~10 s for 7 GB), loaded onto the GPU and warmed up


@dataclass
class DeploySettings:
    engine: str  # the engine directory's name: what the init container unpacks and the server serves
    backend: str
    tp_size: int
    replicas: int = 1
    max_replicas: int | None = None  # HPA ceiling; default 2 x replicas
    gpus_per_replica: int = 1
    image: str = f"trtbuild:{__version__}"
    gpu_image: str | None = None  # h100 overlay; default: image
    name: str = ""
    engine_url: str = ""
    engine_sha256: str | None = None  # pinned in the ConfigMap when the export is known
    api_key_secret: str = "trtbuild-api-key"  # Secret name; key "api-key"
    served_model_name: str | None = None
    max_queue: int = 256
    shutdown_timeout: float = 30.0
    drain_seconds: float = 15.0  # > a few readiness periods: endpoints are removed before the listener closes
    waiting_target: float = 4.0  # HPA: average waiting requests per pod
    shm_size: str = "16Gi"
    extra_labels: dict = field(default_factory=dict)

    @classmethod
    def for_engine(cls, engine_dir: Path, **overrides) -> DeploySettings:
        from trtbuild.manifest import load_manifest

        manifest = load_manifest(engine_dir)
        tp = int(manifest.build.get("tp_size") or 1) * int(manifest.build.get("pp_size") or 1)
        given = {k: v for k, v in overrides.items() if v is not None}
        given.setdefault("gpus_per_replica", tp)
        settings = cls(engine=Path(engine_dir).name, backend=manifest.backend, tp_size=tp, **given)
        settings.name = settings.name or f"trtbuild-{manifest.variant}"
        settings.engine_url = settings.engine_url or f"https://CHANGE-ME.invalid/{settings.engine}.tar"
        settings.check()
        return settings

    def check(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?", self.name):
            raise TrtbuildError(f"--name {self.name!r}: use lowercase letters, digits and '-' (a DNS label, at "
                                "most 52 characters so derived names fit)")
        if self.replicas < 1:
            raise TrtbuildError("--replicas must be at least 1")
        if self.gpus_per_replica != self.tp_size:
            raise TrtbuildError(f"engine {self.engine} was built for {self.tp_size} GPU(s) (tp_size x pp_size); "
                                f"--gpus-per-replica must be {self.tp_size}, or rebuild the engine")
        if not re.match(r"https?://", self.engine_url):
            raise TrtbuildError(f"--engine-url must be an http(s) URL of the archive `trtbuild export` wrote, got "
                                f"{self.engine_url[:100]!r}")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise TrtbuildError(f"--max-replicas ({self.max_replicas}) is below --replicas ({self.replicas})")

    @property
    def config_name(self) -> str:
        return f"{self.name}-serve"

    @property
    def labels(self) -> dict:
        return {"app.kubernetes.io/name": "trtbuild", "app.kubernetes.io/instance": self.name, **self.extra_labels}

    @property
    def grace_seconds(self) -> int:
        """SIGTERM -> drain -> in-flight requests finish -> engine closes; then Kubernetes sends SIGKILL."""
        return int(self.drain_seconds + self.shutdown_timeout) + 15

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _meta(s: DeploySettings, name: str | None = None) -> dict:
    return {"name": name or s.name, "labels": dict(s.labels)}


def serve_command(s: DeploySettings) -> list[str]:
    """The serve container's command. Flags the pod decides (address); settings come from the ConfigMap."""
    return ["trtbuild", "--workspace", ENGINES_MOUNT, "serve", s.engine, "--host", "0.0.0.0", "--port", str(PORT)]


def import_command(s: DeploySettings) -> list[str]:
    """The init container's command: fetch the archive, check sha256 + manifest, unpack (kubelet expands $(X))."""
    cmd = ["trtbuild", "--workspace", ENGINES_MOUNT, "import", "$(ENGINE_URL)"]
    return cmd + ["--sha256", "$(ENGINE_SHA256)"] if s.engine_sha256 else cmd


def serve_settings(s: DeploySettings) -> dict[str, str]:
    """ConfigMap data: env vars of `trtbuild serve` (TRTBUILD_*) and of the init container (ENGINE_*)."""
    data = {"TRTBUILD_MAX_QUEUE": str(s.max_queue), "TRTBUILD_SHUTDOWN_TIMEOUT": f"{s.shutdown_timeout:g}",
            "TRTBUILD_DRAIN_SECONDS": f"{s.drain_seconds:g}",
            # the init container just checked every artifact's sha256: the server checks sizes only
            "TRTBUILD_VERIFY": "size", "ENGINE_URL": s.engine_url}
    if s.served_model_name:
        data["TRTBUILD_SERVED_MODEL_NAME"] = s.served_model_name
    if s.engine_sha256:
        data["ENGINE_SHA256"] = s.engine_sha256
    return data


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": timeout}


def deployment(s: DeploySettings) -> dict:
    env_from = [{"configMapRef": {"name": s.config_name}}]
    api_key = {"name": "TRTBUILD_API_KEY", "valueFrom": {"secretKeyRef": {"name": s.api_key_secret, "key": "api-key"}}}
    engines = {"name": "engines", "mountPath": ENGINES_MOUNT}
    pod_labels = dict(s.labels)
    serve = {
        "name": "serve", "image": s.image, "command": serve_command(s), "envFrom": env_from, "env": [api_key],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "startupProbe": _probe("/v1/health/ready", STARTUP_PERIOD_S, STARTUP_FAILURES),
        "livenessProbe": _probe("/v1/health/live", 10, 3),
        "readinessProbe": _probe("/v1/health/ready", 5, 2),
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [engines],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    fetch = {"name": "fetch-engine", "image": s.image, "command": import_command(s), "envFrom": env_from,
             "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
             "volumeMounts": [engines], "securityContext": {"allowPrivilegeEscalation": False}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(s),
        "spec": {
            "replicas": s.replicas,
            "selector": {"matchLabels": dict(s.labels)},
            # one new pod at a time and none removed first: capacity never drops during a rollout
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}},
                "spec": {
                    "terminationGracePeriodSeconds": s.grace_seconds,
                    "initContainers": [fetch],
                    "containers": [serve],
                    "volumes": [{"name": "engines", "emptyDir": {}}],
                },
            },
        },
    }


def service(s: DeploySettings) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(s),
            "spec": {"type": "ClusterIP", "selector": dict(s.labels),
                     "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}


def pod_disruption_budget(s: DeploySettings) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(s),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(s.labels)}}}


def autoscaler(s: DeploySettings) -> dict:
    """Scale on queue depth: requests waiting in the engines, averaged over pods (prometheus-adapter)."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(s),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
            "minReplicas": s.replicas, "maxReplicas": s.max_replicas or 2 * s.replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": HPA_METRIC},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": f"{s.waiting_target:g}"}}}],
            # a replica takes minutes to start: add one at a time, remove slowly
            "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
                         "scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }


def config_map(s: DeploySettings) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(s, s.config_name), "data": serve_settings(s)}


def base_resources(s: DeploySettings) -> dict[str, dict]:
    return {"deployment.yaml": deployment(s), "service.yaml": service(s), "pdb.yaml": pod_disruption_budget(s),
            "hpa.yaml": autoscaler(s), "configmap.yaml": config_map(s)}


def base_kustomization(s: DeploySettings) -> dict:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": list(base_resources(s))}


def overlay(s: DeploySettings, name: str) -> dict[str, dict]:
    """An overlay's files: kustomization.yaml plus one strategic-merge patch of the Deployment."""
    if name == "cpu-demo":
        patch_spec = {"containers": [{"name": "serve", "resources": {
            "requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}}]}
        images = []
    elif name == "h100":
        gpus = str(s.gpus_per_replica)
        # host memory: a 7B checkpoint is read (~15 GB at FP16) while the engine loads
        resources = {"requests": {"cpu": str(4 * s.gpus_per_replica), "memory": f"{32 * s.gpus_per_replica}Gi",
                                  "nvidia.com/gpu": gpus},
                     "limits": {"memory": f"{48 * s.gpus_per_replica}Gi", "nvidia.com/gpu": gpus}}
        patch_spec = {
            "nodeSelector": dict(HOPPER_SELECTOR),
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            # TensorRT-LLM's MPI ranks and NCCL exchange through /dev/shm, 64 MiB by default in a container
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}}],
            "containers": [{"name": "serve", "resources": resources,
                            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
        }
        images = [_image_override(s.image, s.gpu_image or s.image)]
    else:
        raise TrtbuildError(f"unknown overlay {name!r}; known: {', '.join(OVERLAYS)}")
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": s.name},
             "spec": {"template": {"spec": patch_spec}}}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": ["../../base"], "patches": [{"path": "deployment-patch.yaml"}]}
    if images:
        kustomization["images"] = images
    return {"kustomization.yaml": kustomization, "deployment-patch.yaml": patch}


def _image_override(old: str, new: str) -> dict:
    """A Kustomize `images` entry turning image `old` into `new` (name[:tag] or name@digest)."""
    name, new_tag, digest = split_image(new)
    entry = {"name": split_image(old)[0], "newName": name}
    if digest:
        entry["digest"] = digest
    elif new_tag:
        entry["newTag"] = new_tag
    return entry


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """'reg:5000/a/b:tag' -> ('reg:5000/a/b', 'tag', None); 'a@sha256:...' -> ('a', None, 'sha256:...')."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, None, digest
    head, _, last = ref.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        return (f"{head}/{last}" if head else last), tag, None
    return ref, None, None
