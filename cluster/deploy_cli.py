"""`opsagent deploy render-manifest`: the KubeRay manifest's serveConfigV2 from the Serve config."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "deploy"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser("deploy", help="deployment files: the KubeRay manifest")
    dsub = deploy.add_subparsers(dest="deploy_command", required=True)
    render = dsub.add_parser(
        "render-manifest", help="write cluster/serve_config.yaml, changed by "
        "cluster/kuberay/serve_overrides.yaml, into the manifest's serveConfigV2")
    render.add_argument("--manifest", type=Path, help="the RayService manifest (default: the shipped one)")
    render.add_argument("--check", action="store_true",
                        help="only compare: exit 1 if the manifest is not current")


def run(args: argparse.Namespace) -> int:
    from opsagent.cluster.manifest import MANIFEST, write_manifest

    manifest = args.manifest or MANIFEST
    current = write_manifest(manifest, check=args.check)
    if current:
        print(f"{manifest}: serveConfigV2 is current")
        return 0
    if args.check:
        print(f"{manifest}: serveConfigV2 differs from the Serve config; run `opsagent deploy render-manifest`")
        return 1
    print(f"{manifest}: serveConfigV2 rewritten")
    return 0
