#!/usr/bin/env python3
"""Lays out the Kubernetes JSON schemas of a kubernetes-validate wheel for kubeconform.

The kubernetes-validate package (PyPI) ships JSON schemas generated from each
Kubernetes release's OpenAPI document, one directory per version, e.g.
`kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict/deployment-apps-v1.json`.
Their references point at `https://kubernetes.io/api/_definitions.json` (through each
file's `$id`), which kubeconform cannot load offline. This writes the strict schemas
of the given versions as `OUT/v1.37.0-strict/deployment-apps-v1.json`, kubeconform's
`{{.NormalizedKubernetesVersion}}{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json`,
with the `$id` removed and the references relative to the file (`_definitions.json#/$defs/…`),
nothing else changed.

    kubernetes_schemas.py WHEEL OUT VERSION...
"""

import json
import pathlib
import sys
import zipfile

PREFIX = "kubernetes_validate/kubernetes-json-schema/"
DEFINITIONS = "/api/_definitions.json#"


def relative_refs(node, where):
    """The schema with `/api/_definitions.json#…` references made file-relative;
    any other reference outside the file is an error (a changed layout)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                if value.startswith(DEFINITIONS):
                    value = "_definitions.json#" + value[len(DEFINITIONS):]
                elif not value.startswith("#"):
                    sys.exit(f"error: {where}: unexpected reference {value!r}; "
                             "the wheel's layout changed, update deploy/kubernetes_schemas.py")
            else:
                value = relative_refs(value, where)
            out[key] = value
        return out
    if isinstance(node, list):
        return [relative_refs(v, where) for v in node]
    return node


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    wheel, out, versions = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for version in versions:
            source = f"{PREFIX}v{version}-local-strict/"
            members = [n for n in names if n.startswith(source) and n.endswith(".json")]
            if not members:
                sys.exit(f"error: {wheel.name} has no schemas for Kubernetes {version}")
            target = out / f"v{version}-strict"
            target.mkdir(parents=True, exist_ok=True)
            for name in members:
                schema = json.loads(archive.read(name))
                schema.pop("$id", None)
                schema = relative_refs(schema, name)
                (target / name[len(source):]).write_text(json.dumps(schema))
            print(f"{len(members)} schemas of Kubernetes {version} in {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
