"""Write kserve_inferenceservice_fields.json: the part of KServe's InferenceService CRD schema
that the manifest of ``serve-export --kserve`` uses, for tests/test_kserve.py.

Run by hand, from a checkout of https://github.com/kserve/kserve:
    python tests/data/make_kserve_fields.py KSERVE/config/crd/full/serving.kserve.io_inferenceservices.yaml COMMIT

For every object on the paths below it keeps the names, types, enums and required lists of all
its properties (so an unknown key fails the test), and descends only along those paths.
"""
import json
import sys
from pathlib import Path

import yaml

PATHS = [("metadata",), ("spec", "predictor", "model", "modelFormat"),
         ("spec", "predictor", "model", "resources", "limits"),
         ("spec", "predictor", "model", "resources", "requests")]


def prune(node, paths):
    out = {k: node[k] for k in ("type", "required", "enum", "format", "x-kubernetes-int-or-string",
                                "additionalProperties") if k in node}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = prune(out["additionalProperties"], [])
    props = node.get("properties", {})
    if props:
        heads = {p[0] for p in paths if p}
        out["properties"] = {
            name: prune(child, [p[1:] for p in paths if p and p[0] == name])
            if name in heads else {k: child[k] for k in ("type", "enum", "format",
                                                         "x-kubernetes-int-or-string")
                                   if k in child}
            for name, child in sorted(props.items())}
    if node.get("items"):
        out["items"] = {k: node["items"][k] for k in ("type",) if k in node["items"]}
    return out


def main(crd_file, commit):
    crd = yaml.safe_load(Path(crd_file).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = prune(version["schema"]["openAPIV3Schema"], PATHS)
    out = {"source": {"repository": "https://github.com/kserve/kserve", "commit": commit,
                      "path": "config/crd/full/serving.kserve.io_inferenceservices.yaml",
                      "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"],
                      "version": version["name"], "made_by": "tests/data/make_kserve_fields.py"},
           "schema": schema}
    Path(__file__).with_name("kserve_inferenceservice_fields.json").write_text(
        json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
