"""`trtbuild export`, `trtbuild import` and `trtbuild deploy`: an engine, shipped and run as N replicas."""

from __future__ import annotations

import sys

import click

from trtbuild.cli import emit
from trtbuild.commands import json_option, warn


@click.command("export")
@click.argument("engine")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for ENGINE.tar and ENGINE.tar.sha256 [default: <workspace>/exports].")
@json_option
@click.pass_obj
def export_cmd(ws, engine, out, as_json):
    """Pack ENGINE into a tar archive with its sha256, for `trtbuild import` (or a pod's init container).

    \b
    The engine is verified first (manifest and every artifact's hash); bench results are left out.
    The archive is reproducible: the same engine always gives the same checksum.
      trtbuild export fp8                     # -> <workspace>/exports/fp8-<key>.tar (+ .sha256)
      sha256sum -c fp8-<key>.tar.sha256       # any machine can check it
    """
    from trtbuild.deploy.archive import checksum_path, export_engine

    engine_dir = ws.resolve_engine(engine)
    path, digest = export_engine(ws, engine_dir, out, progress=sys.stderr.isatty())
    size = path.stat().st_size
    emit({"archive": str(path), "sha256": digest, "checksum_file": str(checksum_path(path)), "bytes": size},
         f"exported {engine_dir.name}: {size / 1e6:.1f} MB, sha256 {digest}", as_json, path)


@click.command("import")
@click.argument("archive")
@click.option("--sha256", default=None, metavar="HEX",
              help="Expected sha256 of the archive [default: read from ARCHIVE.sha256, next to it or at URL.sha256].")
@click.option("--force", is_flag=True, help="Replace the engine if the workspace already has it.")
@json_option
@click.pass_obj
def import_cmd(ws, archive, sha256, force, as_json):
    """Check and unpack an engine archive (a path or an http(s) URL) into the workspace.

    \b
    Refused, with nothing left behind: a checksum mismatch, members outside one engine directory
    (links, absolute or '..' paths), or an engine whose artifacts do not match its manifest.
      trtbuild import fp8-<key>.tar
      trtbuild --workspace /engines import https://models.example.com/fp8-<key>.tar --sha256 <hex>
    """
    from trtbuild.deploy.archive import import_engine
    from trtbuild.manifest import load_manifest

    engine_dir = import_engine(ws, archive, sha256=sha256, force=force, progress=sys.stderr.isatty())
    manifest = load_manifest(engine_dir)
    emit({"engine_dir": str(engine_dir), "engine": engine_dir.name, "variant": manifest.variant,
          "backend": manifest.backend, "key": manifest.key},
         f"imported {engine_dir.name} ({manifest.variant}, {manifest.backend}); serve it: "
         f"trtbuild serve {engine_dir.name}", as_json, engine_dir)


@click.command("deploy")
@click.argument("engine")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="Pods serving ENGINE.")
@click.option("--gpus-per-replica", type=click.IntRange(min=1), default=None,
              help="GPUs per pod (h100 overlay) [default: the engine's tp_size x pp_size; must match it].")
@click.option("--image", envvar="TRTBUILD_IMAGE", show_envvar=True, default=None,
              help="Container image with trtbuild (docker/) [default: trtbuild:<version>].")
@click.option("--gpu-image", envvar="TRTBUILD_GPU_IMAGE", default=None,
              help="Image for the h100 overlay (TensorRT-LLM inside) [default: --image].")
@click.option("--engine-url", envvar="TRTBUILD_ENGINE_URL", show_envvar=True, default=None,
              help="Where pods download the engine archive `trtbuild export` wrote (http/https).")
@click.option("--name", default=None, help="Name of the Deployment, Service, ... [default: trtbuild-<variant>].")
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="Autoscaler ceiling [default: 2 x --replicas].")
@click.option("--served-model-name", default=None, help="The model id clients send [default: the engine's name].")
@click.option("--api-key-secret", default="trtbuild-api-key", show_default=True,
              help="Secret holding the API key under key `api-key` (create it; the pods do not start without).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory, replaced whole [default: <workspace>/deploy/<name>].")
@json_option
@click.pass_obj
def deploy_cmd(ws, engine, replicas, gpus_per_replica, image, gpu_image, engine_url, name, max_replicas,
               served_model_name, api_key_secret, out, as_json):
    """Kubernetes manifests (Kustomize) for ENGINE as N replicas, with dashboards and alerts.

    \b
    Writes OUT/base (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler on queue depth,
    ConfigMap with the serve settings), OUT/overlays/{cpu-demo,h100}, OUT/observability (Grafana
    dashboard, Prometheus alert rules, prometheus-adapter rule) and OUT/haproxy.cfg (replicas on one
    host without Kubernetes). docs/deploy.md walks through it.
      trtbuild export fp8 && trtbuild deploy fp8 --replicas 3 --image registry/trtbuild:0.1.0 \\
          --engine-url https://models.example.com/fp8-<key>.tar
      kubectl apply -k OUT/overlays/h100
    """
    from trtbuild.deploy.bundle import deploy_files, pinned_checksum
    from trtbuild.deploy.kube import DeploySettings
    from trtbuild.deploy.write import write_tree

    engine_dir = ws.resolve_engine(engine)
    settings = DeploySettings.for_engine(
        engine_dir, replicas=replicas, gpus_per_replica=gpus_per_replica, image=image, gpu_image=gpu_image,
        engine_url=engine_url, name=name, max_replicas=max_replicas, served_model_name=served_model_name,
        api_key_secret=api_key_secret, engine_sha256=pinned_checksum(ws, engine_dir))
    if engine_url is None:
        warn(f"no --engine-url: pods will fail to fetch {settings.engine_url}; upload `trtbuild export "
             f"{engine_dir.name}` somewhere they can reach and pass its URL")
    if settings.engine_sha256 is None:
        warn(f"no export of {engine_dir.name} in {ws.exports_dir}: the checksum is not pinned, pods trust "
             "URL.sha256; run `trtbuild export` first to pin it")
    if settings.backend == "tensorrt-llm":
        warn("a TensorRT engine needs a GPU: use overlays/h100 (cpu-demo serves torch-backend engines)")
    out_dir = write_tree(out or ws.root / "deploy" / settings.name, deploy_files(settings))
    emit({"out": str(out_dir), "settings": settings.to_dict(),
          "overlays": {o: str(out_dir / "overlays" / o) for o in ("cpu-demo", "h100")}},
         f"wrote {settings.name}: {replicas} replica(s) of {engine_dir.name}; apply with\n"
         f"  kubectl create secret generic {api_key_secret} --from-literal=api-key=...\n"
         f"  kubectl apply -k {out_dir}/overlays/h100      (or overlays/cpu-demo)", as_json, out_dir)
