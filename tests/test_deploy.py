"""`trtbuild deploy`: Kustomize output validated against the Kubernetes schemas (kubernetes-validate, offline),
its overlays rendered (in Python; checked against `kubectl kustomize` where kubectl exists), and what the pods
run checked against the real CLI and server: the serve and import commands parse with trtbuild's own click
commands, ConfigMap settings are env vars `trtbuild serve` reads, probes hit routes the server has, and every
metric the dashboard, alerts and autoscaler use is in a live server's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import httpx
import kubernetes_validate
import promql_parser
import pytest
import yaml
from helpers import trtbuild
from prometheus_client.parser import text_string_to_metric_families

import trtbuild.manifest as manifest_module
from trtbuild.deploy import kube, observe
from trtbuild.deploy.overlay import render

SCHEMA_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest still common in clouds, newest bundled
URL = "https://models.example.com/engines/fp16.tar"
REPLICAS = 3


@pytest.fixture(scope="module")
def out(workspace, engine_dirs, tmp_path_factory):
    """`trtbuild export` then `trtbuild deploy` (pins the export's checksum), into a workspace of its own."""
    from trtbuild.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("deploy-ws"))
    (ws.engines_dir).mkdir(parents=True)
    shutil.copytree(engine_dirs["fp16"], ws.engines_dir / engine_dirs["fp16"].name)
    from trtbuild.cli import main

    target = ws.root / "out"
    for args in (["export", "fp16"], ["deploy", "fp16", "--replicas", str(REPLICAS), "--engine-url", URL,
                                      "--image", "registry.example.com/trtbuild:0.1.0",
                                      "--gpu-image", "registry.example.com/trtbuild-trtllm:0.1.0",
                                      "--out", str(target)]):
        try:
            main(["--workspace", str(ws.root), *args])
        except SystemExit as exc:
            assert exc.code == 0
    return target


def docs(out: Path, overlay: str) -> dict[str, dict]:
    return {d["kind"]: d for d in render(out / "overlays" / overlay)}


def serve_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "serve")


def parse_cli(argv: list[str], env: dict[str, str], monkeypatch):
    """Parse a container command with trtbuild's own click group -> (subcommand name, its params)."""
    from trtbuild.cli import cli

    assert argv[0] == "trtbuild"
    for name in [n for n in __import__("os").environ if n.startswith("TRTBUILD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = cli.make_context("trtbuild", argv[1:])
    with warnings.catch_warnings():  # click 8.2+ keeps the subcommand in protected_args until 9.0
        warnings.simplefilter("ignore", DeprecationWarning)
        rest = [*ctx.protected_args, *ctx.args]
    command = cli.get_command(ctx, rest[0])
    return rest[0], command.make_context(rest[0], rest[1:], parent=ctx).params, ctx.params


@pytest.mark.parametrize("overlay", kube.OVERLAYS)
def test_overlays_pass_kubernetes_schema_validation(out, overlay):
    rendered = render(out / "overlays" / overlay)
    assert sorted(d["kind"] for d in rendered) == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"])
    for doc in rendered:
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields fail too


def test_schema_validation_catches_a_typo(out):
    deployment = docs(out, "h100")["Deployment"]
    serve_container(deployment)["readinessProbe"]["httpGet"]["paht"] = "/v1/health/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", kube.OVERLAYS)
def test_python_rendering_matches_kubectl_kustomize(out, overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the Python rendering of the overlays is not cross-checked here")
    built = subprocess.run([kubectl, "kustomize", str(out / "overlays" / overlay)], capture_output=True,
                           text=True, timeout=120)
    assert built.returncode == 0, built.stderr

    def key(d):
        return d["kind"], d["metadata"]["name"]

    assert sorted(yaml.safe_load_all(built.stdout), key=key) == sorted(render(out / "overlays" / overlay), key=key)


@pytest.mark.parametrize("overlay", kube.OVERLAYS)
def test_serve_command_and_settings_are_what_trtbuild_serve_accepts(out, overlay, engine_dirs, monkeypatch):
    rendered = docs(out, overlay)
    container = serve_container(rendered["Deployment"])
    settings = rendered["ConfigMap"]["data"]
    assert container["envFrom"] == [{"configMapRef": {"name": rendered["ConfigMap"]["metadata"]["name"]}}]
    serve_env = {k: v for k, v in settings.items() if k.startswith("TRTBUILD_") and k != "TRTBUILD_VERIFY"}
    name, params, group = parse_cli(container["command"], {**serve_env, "TRTBUILD_API_KEY": "k"}, monkeypatch)
    from trtbuild.commands.serve import serve_cmd

    envvars = {p.envvar for p in serve_cmd.params if getattr(p, "envvar", None)}
    assert set(serve_env) <= envvars, f"ConfigMap keys trtbuild serve does not read: {set(serve_env) - envvars}"
    assert name == "serve" and params["engine"] == engine_dirs["fp16"].name
    assert (params["host"], params["port"]) == ("0.0.0.0", kube.PORT)
    assert params["drain_seconds"] == 15.0 and params["shutdown_timeout"] == 30.0 and params["api_key"] == "k"
    assert group["workspace"] == kube.ENGINES_MOUNT
    # TRTBUILD_VERIFY is read by manifest.verify_engine, not an option: check it is still read there
    assert 'os.environ.get("TRTBUILD_VERIFY"' in Path(manifest_module.__file__).read_text()
    key = next(e for e in container["env"] if e["name"] == "TRTBUILD_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "trtbuild-api-key", "key": "api-key"}
    # the pod stops only after drain + in-flight grace: Kubernetes must not SIGKILL earlier
    grace = rendered["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > params["drain_seconds"] + params["shutdown_timeout"]


def test_init_container_imports_the_pinned_archive(out, engine_dirs, monkeypatch):
    rendered = docs(out, "h100")
    init = rendered["Deployment"]["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["fetch-engine"]
    settings = rendered["ConfigMap"]["data"]
    # kubelet expands $(VAR) from the container's env before running the command
    argv = [re.sub(r"\$\((\w+)\)", lambda m: settings[m.group(1)], a) for a in init[0]["command"]]
    name, params, group = parse_cli(argv, {}, monkeypatch)
    pinned = (out.parent / "exports" / f"{engine_dirs['fp16'].name}.tar.sha256").read_text().split()[0]
    assert (name, params["archive"], params["sha256"]) == ("import", URL, pinned)
    assert group["workspace"] == kube.ENGINES_MOUNT
    mounts = {m["name"]: m["mountPath"] for m in init[0]["volumeMounts"]}
    assert mounts == {"engines": kube.ENGINES_MOUNT}
    serve_mounts = serve_container(rendered["Deployment"])["volumeMounts"]
    assert {"name": "engines", "mountPath": kube.ENGINES_MOUNT} in serve_mounts


@pytest.mark.parametrize("overlay", kube.OVERLAYS)
def test_probes_hit_real_routes_on_the_served_port(out, overlay):
    from trtbuild.server import create_app

    routes = {r.path for r in create_app(lambda: None).routes}
    container = serve_container(docs(out, overlay)["Deployment"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": kube.PORT} and container["command"][container["command"].index("--port") + 1] == "8000"
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: p["httpGet"]["path"] for k, p in probes.items()} == {
        "startupProbe": "/v1/health/ready", "livenessProbe": "/v1/health/live", "readinessProbe": "/v1/health/ready"}
    assert {p["httpGet"]["path"] for p in probes.values()} <= routes
    assert all(p["httpGet"]["port"] == "http" for p in probes.values())
    startup = probes["startupProbe"]
    # a 7B engine: hashing 7 GB (~10 s), loading onto the GPU and warm-up take minutes; 10 min is the floor
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_gpu_requests_shm_and_hopper_nodes_in_h100_only(out):
    h100, cpu = docs(out, "h100")["Deployment"], docs(out, "cpu-demo")["Deployment"]
    resources = serve_container(h100)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"  # tp_size 1
    pod = h100["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.family": "hopper"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in serve_container(h100)["volumeMounts"]
    assert serve_container(h100)["image"] == "registry.example.com/trtbuild-trtllm:0.1.0"
    assert all(c["image"] == "registry.example.com/trtbuild-trtllm:0.1.0" for c in pod["initContainers"])
    cpu_pod = cpu["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu_pod) and "nodeSelector" not in cpu_pod
    assert serve_container(cpu)["image"] == "registry.example.com/trtbuild:0.1.0"
    assert serve_container(cpu)["resources"]["requests"]["cpu"] == "2"
    assert h100["spec"]["replicas"] == cpu["spec"]["replicas"] == REPLICAS


def test_hpa_scales_on_the_adapter_metric(out):
    rendered = docs(out, "h100")
    hpa = rendered["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == rendered["Deployment"]["metadata"]["name"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (REPLICAS, 2 * REPLICAS)
    adapter = yaml.safe_load((out / "observability" / "prometheus-adapter-rules.yaml").read_text())
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == adapter["rules"][0]["name"]["as"]
    assert rendered["PodDisruptionBudget"]["spec"]["selector"] == rendered["Deployment"]["spec"]["selector"]
    assert rendered["Service"]["spec"]["selector"] == rendered["Deployment"]["spec"]["selector"]["matchLabels"]


def test_bad_options_are_one_line_errors(capsys, out, workspace):
    code, _, err = trtbuild(capsys, workspace, "deploy", "fp16", "--gpus-per-replica", "2", "--out",
                            str(out.parent / "never"))
    assert code == 1 and "--gpus-per-replica must be 1" in err and len(err.strip().splitlines()) == 1
    mine = out.parent / "not-ours"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    code, _, err = trtbuild(capsys, workspace, "deploy", "fp16", "--out", str(mine), "--engine-url", URL)
    assert code == 1 and "was not written by `trtbuild deploy`" in err
    assert (mine / "keep.txt").read_text() == "user data" and not (out.parent / "never").exists()


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.mark.slow
def test_dashboard_alerts_and_adapter_use_metrics_the_server_exports(out, workspace, engine_dirs):
    from trtbuild.server.process import ServerProcess

    with ServerProcess(engine_dirs["fp16"], workspace.root) as server:
        body = {"model": server.model, "prompt": "Hello", "max_tokens": 4}
        assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 200
        assert httpx.post(f"{server.url}/v1/completions", json={**body, "model": "nope"}).status_code == 404
        text = httpx.get(f"{server.url}/metrics").text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    dashboard = json.loads((out / "observability" / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((out / "observability" / "prometheus-rules.yaml").read_text())
    adapter = yaml.safe_load((out / "observability" / "prometheus-adapter-rules.yaml").read_text())
    used: set[str] = set()
    for expr in observe.queries(dashboard, rules, adapter):
        used |= metric_names(expr)  # parses every expression: a syntax error fails here
    assert used - exported == set(), f"not exported by trtbuild serve: {used - exported}"
    panels = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("running", "waiting", "first token", "inter-token", "end-to-end", "tokens/s", "finish"):
        assert topic in panels
    assert {"TrtbuildSaturated", "TrtbuildHighErrorRate"} <= {r["alert"] for r in rules["groups"][0]["rules"]}
    assert 'code="404"' in text and 'code="200"' in text  # http_responses_total counts by status
