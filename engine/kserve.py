"""A KServe InferenceService manifest for a model repository written by ``serve-export``.

Past one machine, KServe runs the same repository on its Triton runtime: an
``InferenceService`` (``serving.kserve.io/v1beta1``) whose predictor names the model format
``triton`` and the URI the repository was copied to (``s3://``, ``gs://``, ``pvc://``, ...);
KServe's storage initializer downloads it into the pod and starts ``tritonserver`` on it,
scaling replicas between ``min_replicas`` and ``max_replicas`` on in-flight requests per
replica (Knative's ``concurrency`` metric, one of the four KServe accepts: cpu, memory,
concurrency, rps). The repository is only read, so it serves unchanged from a read-only
volume.

Target ``python`` needs this package inside the server's image: pass ``image`` (an image built
from the runtime's ``nvcr.io/nvidia/tritonserver`` release with ``pip install
"inception-infer[cpu]"``). The server's own backends (``tensorrt_plan``, ``onnxruntime_onnx``,
``openvino``) run on the stock runtime image.

The manifest is written as YAML; ``tests/test_kserve.py`` checks it against the field list of
KServe's published CRD, as no cluster runs here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from .errors import ArtifactError, InputError

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
MODEL_FORMAT = "triton"
# the Triton runtime's image tag for the server release the nvidia-pytriton wheel bundles
RUNTIME_VERSION = "24.10-py3"
_URI = re.compile(r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://\S+$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def service_name(model_name: str) -> str:
    """A Kubernetes name (an RFC 1035 label) for ``model_name``: lowercase, ``_``/``.`` to
    ``-``."""
    name = re.sub(r"[^a-z0-9-]", "-", model_name.lower()).strip("-")
    if not _DNS_LABEL.match(name):
        raise InputError(f"model name {model_name!r} gives no valid Kubernetes name ({name!r}: "
                         "lowercase letters, digits and '-', starting with a letter, at most 63 "
                         "characters); pick another --name")
    return name


def check_storage_uri(uri: Optional[str]) -> str:
    if not _URI.match(uri or ""):
        raise InputError(f"storage URI {uri!r} is not one KServe's storage initializer reads "
                         "(s3://, gs://, pvc://, https://, hdfs://, oci://, hf://)")
    return uri


def check_request(storage_uri: str, model_name: str, python_target: bool,
                  image: Optional[str]) -> None:
    """What a manifest needs that its entry does not say, checked before anything is written:
    a URI the storage initializer reads, a name that makes a Kubernetes name, and for the
    python target an image with this package in it."""
    check_storage_uri(storage_uri)
    service_name(model_name)
    if python_target and not image:
        raise InputError("the python target runs this package inside the server: give the "
                         "image that has it installed (--kserve-image), built from "
                         f"nvcr.io/nvidia/tritonserver:{RUNTIME_VERSION}")


def inference_service(model_dir, storage_uri: str, name: Optional[str] = None,
                      min_replicas: int = 1, max_replicas: int = 4,
                      concurrency_target: Optional[int] = None, cpu: str = "2",
                      memory: str = "4Gi", gpus: Optional[int] = None,
                      image: Optional[str] = None) -> dict:
    """The InferenceService for the repository entry ``model_dir`` (``<repo>/<name>``), its
    repository copied to ``storage_uri``.

    concurrency_target: in-flight requests per replica before KServe adds one (default: the
        model's ``max_batch_size``, what one replica batches at once).
    gpus: GPUs per replica (default: 1 for an entry whose instances are ``KIND_GPU``, such as
        a TensorRT plan's, else 0).
    """
    model_dir = Path(model_dir)
    config = model_dir / "config.pbtxt"
    if not config.is_file():
        raise ArtifactError(f"{model_dir}: no config.pbtxt; write the entry with "
                            "inception-engine serve-export first")
    text = config.read_text()
    check_request(storage_uri, name or model_dir.name, 'backend: "python"' in text, image)
    for what, value in (("min_replicas", min_replicas), ("max_replicas", max_replicas)):
        if int(value) < 0 or (what == "max_replicas" and int(value) < 1):
            raise InputError(f"{what} must be >= {0 if what == 'min_replicas' else 1}, "
                             f"got {value}")
    if int(max_replicas) < int(min_replicas):
        raise InputError(f"max_replicas {max_replicas} is below min_replicas {min_replicas}")
    batch = re.search(r"^max_batch_size: (\d+)", text, re.M)
    target = int(concurrency_target or (int(batch.group(1)) if batch else 1) or 1)
    if gpus is None:    # a GPU instance kind fails to load on a pod without one
        gpus = 1 if re.search(r"^\s*kind: KIND_GPU\s*$", text, re.M) else 0
    if int(gpus) < 0:
        raise InputError(f"gpus must be >= 0, got {gpus}")
    resources = {"cpu": str(cpu), "memory": str(memory)}
    if gpus:
        resources["nvidia.com/gpu"] = str(int(gpus))
    model = {"modelFormat": {"name": MODEL_FORMAT}, "protocolVersion": "v2",
             "runtimeVersion": RUNTIME_VERSION, "storageUri": storage_uri,
             # the same server flags as `inception-engine serve`: ready only when every model
             # is, and a model that fails to load fails the pod instead of serving without it
             "args": ["--strict-readiness=true", "--exit-on-error=true"],
             "resources": {"requests": dict(resources), "limits": dict(resources)}}
    if image:
        model["image"] = image
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": service_name(name or model_dir.name)},
            "spec": {"predictor": {"minReplicas": int(min_replicas),
                                   "maxReplicas": int(max_replicas),
                                   "scaleMetric": "concurrency", "scaleTarget": target,
                                   "model": model}}}


def to_yaml(value, indent: int = 0) -> str:
    """YAML for nested dicts and lists of strings and numbers (strings JSON-quoted, which YAML
    reads as the same strings)."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        return "\n".join(f"{pad}- {_scalar(v)}" if not isinstance(v, (dict, list)) else
                         f"{pad}-\n{to_yaml(v, indent + 1)}" for v in value)
    return pad + _scalar(value)


def _scalar(v) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, (int, float)):
        return json.dumps(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(str(v))


def write_manifest(path, manifest: dict) -> Path:
    from .fileio import atomic_write_text
    path = Path(path)
    atomic_write_text(path, to_yaml(manifest) + "\n")
    return path
