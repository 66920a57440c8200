"""Triton Inference Server Python-backend model that runs this project's runtime.

``inception-engine serve-export --target python`` copies this file to
``<repo>/<name>/<version>/model.py`` beside the model file. Each model instance is one stub
process: it opens the file with ``engine.load`` (OpenVINO on a CPU by default; the
``backend`` parameter picks another engine) and answers the server's dynamic batches with one
runtime call each.

With the ``input`` parameter ``encoded`` (``serve-export --input encoded``) each request carries
one encoded image (JPEG or PNG) as a UINT8 tensor of shape [1, N], its file's bytes, and the
model decodes and preprocesses it with ``engine.preprocess`` (the code ``inception-engine
run`` uses on files) before the batch runs. The bytes travel as UINT8, not as a BYTES
tensor, because the stub bundled with server 2.51 reads BYTES tensors through its numpy
bridge, which misreads numpy 2 buffers (the stub aborts on the length prefix of every
element). The input is ragged (``allow_ragged_batch``), so requests of different sizes share
one dynamic batch. An image that fails its checks fails its own request only: its batchmates
run and get their answers.

Tensors cross between the server and this process as DLPack capsules (through torch), never
through the stub's numpy bridge: that bridge is built for numpy 1.x and misreads the arrays of
numpy 2 (their dtype layout changed), which shows as "output tensor shape does not match size
of output". Inside, the batch is a numpy view of the same memory: the runtime's checks then
run in numpy, not in torch, whose OpenMP threads (used from two images up) would keep
spinning and take the cores from the engine.

The stub embeds its own interpreter, which ignores ``PYTHONPATH`` (it starts from the
stub's base Python, without the virtual environment that runs ``inception-engine serve``). So
this file puts the ``PYTHONPATH`` entries that ``engine.tritonserver.server_environment``
passes (the ``engine`` package's directory, then that interpreter's ``sys.path``) in front of
``sys.path`` itself, before it imports ``engine``, numpy or torch. A server started some other
way (the NGC container) without ``PYTHONPATH`` keeps its own ``sys.path``.

This file is run by the server's stub, not imported by the ``engine`` package.
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils


def _import_path_from_environment():
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if p and os.path.isdir(p)]
    sys.path[:0] = list(dict.fromkeys(entries))


_import_path_from_environment()


def _parameters(model_config: dict) -> dict:
    """The config's ``parameters`` block as plain strings."""
    return {key: value.get("string_value", "")
            for key, value in model_config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        import engine

        config = json.loads(args["model_config"])
        params = _parameters(config)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        model_file = os.path.join(version_dir, params["model_file"])
        threads = int(params.get("threads") or 0) or None
        self.runtime = engine.load(model_file, backend=params.get("engine") or None,
                                   threads=threads)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.errors = (engine.EngineError, RuntimeError)
        self.bad_input = engine.InputError
        self.encoded = params.get("input") == "encoded"
        if self.encoded:
            if self.runtime.config is None:
                raise engine.ArtifactError(f"{model_file} carries no model config, so images "
                                           "cannot be preprocessed for it; export it with "
                                           "inception-engine export")
            self.image_limits = {"max_bytes": int(params["max_image_bytes"]),
                                 "max_pixels": int(params["max_image_pixels"])}

    def _inputs(self, request):
        import torch
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        x = torch.from_dlpack(tensor.to_dlpack()).numpy()
        return self._decoded(x) if self.encoded else x

    def _decoded(self, data):
        """The model input of one request's encoded image (UINT8 [1, N])."""
        from engine.preprocess import decode_image, preprocess
        if data.ndim != 2 or data.shape[0] != 1:
            raise self.bad_input(f"input {self.input_name!r} must hold one encoded image per "
                                 f"request, shape [1, N] (N bytes), got {list(data.shape)}; "
                                 "send each image as its own request (the server batches them)")
        image = decode_image(data[0].tobytes(), **self.image_limits)
        return preprocess(image, self.runtime.config).numpy()

    def _response(self, outputs):
        import numpy as np
        import torch
        out = torch.from_numpy(np.ascontiguousarray(outputs))
        tensor = pb_utils.Tensor.from_dlpack(self.output_name, torch.utils.dlpack.to_dlpack(out))
        return pb_utils.InferenceResponse(output_tensors=[tensor])

    def _error(self, error):
        """The error as the server's: a bad input is the client's (HTTP 400), else ours."""
        code = (pb_utils.TritonError.INVALID_ARG if isinstance(error, self.bad_input)
                else pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))

    def _run_each(self, batches):
        """One runtime call per request, so a bad request fails alone."""
        responses = []
        for x in batches:
            try:
                responses.append(self._response(self.runtime(x)))
            except self.errors as e:
                responses.append(self._error(e))
        return responses

    def execute(self, requests):
        """Run the server's batch of requests as one batch; split the outputs back. A request
        whose input cannot be read gets its error; the others still run."""
        import numpy as np
        responses, batches, good = [None] * len(requests), [], []
        for i, request in enumerate(requests):
            try:
                batches.append(self._inputs(request))
                good.append(i)
            except Exception as e:      # noqa: BLE001 - whatever one request's bytes raise
                responses[i] = self._error(e)   # fails that request alone, with its message
        if len(batches) == 1:
            outputs = self._run_each(batches)
        elif batches:
            try:
                joined = self.runtime(np.concatenate(batches))
                ends = np.cumsum([len(x) for x in batches])[:-1]
                outputs = [self._response(part) for part in np.split(joined, ends)]
            except self.errors:
                outputs = self._run_each(batches)
        for i, response in zip(good, outputs if batches else []):
            responses[i] = response
        return responses

    def finalize(self):
        self.runtime.close()
