"""Serving: vitdeploy engines behind NVIDIA Triton Inference Server, Triton model repositories, load tests.

- ``triton``: ``vitdeploy serve``, a Triton server started in-process by pytriton, one Triton
  model per vitdeploy model, each running on a vitdeploy backend engine;
- ``repository``: ``vitdeploy triton-repo``, a model repository for a standalone Triton;
- ``loadtest``: ``vitdeploy loadtest``, a closed-loop load generator over gRPC or HTTP.
"""
