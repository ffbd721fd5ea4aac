#!/usr/bin/env python3
"""Checks deploy/kubernetes/ for what a schema validator cannot see.

- The real outboxd binary loads each outboxd container's configuration: the
  ConfigMap's outboxd.toml and the container's environment (OUTBOXD_* names, values
  from the Secret), with the pod's mounts laid out in a temporary directory. It runs
  `outboxd init` (prints the DDL, connects to nothing), which fails with exit code 2
  on an unknown key in the file or in an OUTBOXD_* variable, a bad value, or an
  unreadable postgres.password_file. A misspelt variable must fail too.
- Every librdkafka property in [kafka.producer] or an OUTBOXD_KAFKA__PRODUCER__*
  variable is a producer property of the librdkafka outboxd builds with (its
  CONFIGURATION.md, from the rdkafka-sys crate that Cargo.lock names).
- Every absolute path in outboxd.toml or the environment that lies under a mount
  exists in the mounted ConfigMap or Secret.
- The Deployment: two replicas; a rolling update that never goes below them; the
  containers' user is the Dockerfile's; the probes ask /readyz and /healthz on
  server.metrics_address's port, which listens on all interfaces; the grace period
  exceeds server.shutdown_timeout_secs; every container runs unprivileged with a
  read-only root file system.
- Names agree: the selectors of the Deployment, the PodDisruptionBudget (minAvailable
  1), the anti-affinity terms and the PodMonitor match the pods' labels; the
  PodMonitor's port is a container port; volumes and secretKeyRefs name the
  ConfigMap and Secret, and keys they have.

    check_manifests.py --outboxd BINARY
"""

import argparse
import base64
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy/kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
PRODUCER_ENV = "OUTBOXD_KAFKA__PRODUCER__"
CONFIG_ERROR_EXIT = 2  # outboxd's exit code for a configuration it cannot load

problems = []


def problem(text):
    problems.append(text)


def load_objects():
    objects = {}
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def one(objects, kind):
    found = [o for (k, _), o in objects.items() if k == kind]
    if len(found) != 1:
        sys.exit(f"error: expected one {kind} in deploy/kubernetes, found {len(found)}")
    return found[0]


def selects(selector, labels, what):
    wanted = selector.get("matchLabels", {})
    if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
        problem(f"{what} selects {wanted}, which does not match the pods' labels {labels}")


def secret_data(secret):
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def lay_out_mounts(pod, container, configmap, secret, root):
    """Writes the container's ConfigMap and Secret mounts under root; returns the
    mount paths."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm_data, secrets = configmap.get("data", {}), secret_data(secret)
    mounts = []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            problem(f"container {container['name']}: volumeMount {mount['name']} names no volume")
            continue
        if "configMap" in volume:
            source, available, kind = volume["configMap"], cm_data, "ConfigMap"
            if source["name"] != configmap["metadata"]["name"]:
                problem(f"volume {volume['name']} names ConfigMap {source['name']}, not the one here")
        elif "secret" in volume:
            source, available, kind = volume["secret"], secrets, "Secret"
            if source["secretName"] != secret["metadata"]["name"]:
                problem(f"volume {volume['name']} names Secret {source['secretName']}, not the one here")
        else:
            continue
        items = source.get("items") or [{"key": k, "path": k} for k in available]
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in available:
                problem(f"volume {volume['name']}: the {kind} has no key {item['key']}")
                continue
            (target / item["path"]).write_text(available[item["key"]])
        mounts.append(mount["mountPath"].rstrip("/") + "/")
    return mounts


def environment(container, secret):
    env = {}
    secrets = secret_data(secret)
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            problem(f"container {container['name']}: {var['name']} comes from neither a value nor the Secret")
        elif ref["name"] != secret["metadata"]["name"] or ref["key"] not in secrets:
            problem(f"container {container['name']}: {var['name']} refers to {ref['name']}/{ref['key']}, "
                    "which the Secret here does not have")
        else:
            env[var["name"]] = secrets[ref["key"]]
    return env


def remap(text, mounts, root):
    for mount in mounts:
        text = text.replace(mount, str(root) + mount)
    return text


def check_paths(where, text, mounts, root):
    for path in re.findall(r"(?<![\w.])(/[\w.\-/]+)", text):
        if any(path.startswith(m) for m in mounts) and not (root / path.lstrip("/")).is_file():
            problem(f"{where} names {path}, which no ConfigMap or Secret key is mounted at")


def run_outboxd(binary, env):
    """`outboxd init` with only this environment: loads the configuration and prints
    DDL without connecting anywhere."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run([binary, "init"], env=clean, capture_output=True, text=True, timeout=60)


def producer_properties():
    """librdkafka's producer properties (C/P column `*` or `P`) from the CONFIGURATION.md
    of the rdkafka-sys crate in Cargo.lock, as cargo unpacked it for the build."""
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    version = next(p["version"] for p in lock["package"] if p["name"] == "rdkafka-sys")
    cargo_home = pathlib.Path(os.environ.get("CARGO_HOME", pathlib.Path.home() / ".cargo"))
    docs = sorted(cargo_home.glob(f"registry/src/*/rdkafka-sys-{version}/librdkafka/CONFIGURATION.md"))
    if not docs:
        sys.exit(f"error: rdkafka-sys {version} is not unpacked under {cargo_home}/registry/src: "
                 "run `cargo build -p outboxd` first")
    doc = docs[0]
    props = set()
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] in ("*", "P") and re.fullmatch(r"[a-z0-9.]+", cells[0]):
            props.add(cells[0])
    if len(props) < 50:
        sys.exit(f"error: read only {len(props)} producer properties from {doc}: has its table changed?")
    return props, doc


def check_containers(binary, deployment, configmap, secret):
    pod = deployment["spec"]["template"]["spec"]
    toml_text = configmap["data"]["outboxd.toml"]
    config = tomllib.loads(toml_text)
    props, doc = producer_properties()
    for container in pod.get("initContainers", []) + pod["containers"]:
        env = environment(container, secret)
        names = set(config.get("kafka", {}).get("producer", {}))
        names |= {k[len(PRODUCER_ENV):].lower().replace("_", ".") for k in env if k.startswith(PRODUCER_ENV)}
        for name in sorted(names - props):
            problem(f"container {container['name']}: {name} is not a librdkafka producer property ({doc})")
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            mounts = lay_out_mounts(pod, container, configmap, secret, root)
            check_paths(f"container {container['name']}: outboxd.toml", toml_text, mounts, root)
            for name, value in env.items():
                check_paths(f"container {container['name']}: {name}", value, mounts, root)
            config_file = env.get("OUTBOXD_CONFIG")
            if config_file is None:
                problem(f"container {container['name']}: OUTBOXD_CONFIG is not set")
                continue
            # The TOML as mounted, its paths pointing into the laid-out mounts.
            mounted = root / config_file.lstrip("/")
            if mounted.is_file():
                mounted.write_text(remap(toml_text, mounts, root))
            env = {k: remap(v, mounts, root) for k, v in env.items()}
            loaded = run_outboxd(binary, env)
            if loaded.returncode != 0 or "pg_create_logical_replication_slot" not in loaded.stdout:
                problem(f"container {container['name']}: outboxd did not load its configuration "
                        f"(exit {loaded.returncode}): {loaded.stderr.strip()}")
                continue
            # The same with a misspelt variable must fail, or this check proves nothing.
            misspelt = run_outboxd(binary, {**env, "OUTBOXD_KAFKA__DELIVERYY": "exactly-once"})
            if misspelt.returncode != CONFIG_ERROR_EXIT or "OUTBOXD_KAFKA__DELIVERYY" not in misspelt.stderr:
                problem(f"outboxd accepted a misspelt variable, OUTBOXD_KAFKA__DELIVERYY (exit "
                        f"{misspelt.returncode}): loading the configuration proves nothing")
                continue
            variables = ", ".join(sorted(k for k in env if k.startswith("OUTBOXD_")))
            print(f"container {container['name']}: outboxd loads outboxd.toml with {variables} "
                  "(and refuses a misspelt variable)", file=sys.stderr)
    return config


def check_deployment(deployment, config, objects):
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    selects(spec["selector"], labels, "the Deployment")
    if spec.get("replicas") != 2:
        problem(f"the Deployment has {spec.get('replicas')} replicas, not an active/standby pair (2)")
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    if spec.get("strategy", {}).get("type") != "RollingUpdate" or rolling.get("maxUnavailable") not in (0, "0%"):
        problem("the Deployment's update must be RollingUpdate with maxUnavailable 0: the pair stays whole")
    uid = re.search(r"useradd[^\n]*--uid (\d+)", DOCKERFILE.read_text()).group(1)
    if str(pod["securityContext"].get("runAsUser")) != uid:
        problem(f"runAsUser {pod['securityContext'].get('runAsUser')} is not the image's user {uid} (Dockerfile)")
    for term in pod.get("affinity", {}).get("podAntiAffinity", {}).get(
            "preferredDuringSchedulingIgnoredDuringExecution", []):
        selects(term["podAffinityTerm"]["labelSelector"], labels, "an anti-affinity term")
    for container in pod.get("initContainers", []) + pod["containers"]:
        sc = container.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            problem(f"container {container['name']}: needs readOnlyRootFilesystem, no privilege "
                    "escalation and all capabilities dropped")
    relay = next(c for c in pod["containers"] if c.get("args", [None])[0] == "run")
    address = config.get("server", {}).get("metrics_address", "127.0.0.1:9187")
    host, _, port = address.rpartition(":")
    if host not in ("0.0.0.0", "[::]"):
        problem(f"server.metrics_address {address}: probes and Prometheus cannot reach {host}")
    ports = {p.get("name"): p["containerPort"] for p in relay.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = relay.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or str(ports.get(get.get("port"), get.get("port"))) != port:
            problem(f"the {probe} must ask {path} on port {port} (server.metrics_address)")
    drain = config.get("server", {}).get("shutdown_timeout_secs", 30)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < drain + 5:
        problem(f"terminationGracePeriodSeconds {grace} leaves no time after the drain "
                f"(server.shutdown_timeout_secs {drain}) to confirm the slot and exit")
    if relay.get("lifecycle", {}).get("preStop"):
        problem("a preStop hook delays SIGTERM and eats into the drain's grace period")
    pdb = one(objects, "PodDisruptionBudget")
    selects(pdb["spec"]["selector"], labels, "the PodDisruptionBudget")
    if pdb["spec"].get("minAvailable") != 1:
        problem("the PodDisruptionBudget must keep one relay (minAvailable: 1)")
    monitor = one(objects, "PodMonitor")
    selects(monitor["spec"]["selector"], labels, "the PodMonitor")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint.get("port") not in ports:
            problem(f"the PodMonitor scrapes port {endpoint.get('port')}, which the relay does not name")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outboxd", required=True, help="the outboxd binary")
    args = parser.parse_args()
    objects = load_objects()
    deployment = one(objects, "Deployment")
    configmap, secret = one(objects, "ConfigMap"), one(objects, "Secret")
    config = check_containers(args.outboxd, deployment, configmap, secret)
    check_deployment(deployment, config, objects)
    for text in problems:
        print(f"error: deploy/kubernetes: {text}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"deploy/kubernetes: {len(objects)} objects consistent", file=sys.stderr)


if __name__ == "__main__":
    main()
