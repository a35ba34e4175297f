"""GPU checks: run where CUDA is present (benchmarks/gpu.sh runs them); skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from llmrec_ray.encoder import Encoder
from llmrec_ray.text_model import resolve_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEXTS = ["space opera with a rebel fleet", "a heist in a casino vault", "romance in Paris", "x"]


def _vectors(device: str, dtype: str) -> np.ndarray:
    path, _ = resolve_model("minilm")
    enc = Encoder(path, "mean", 256, True, device=device, dtype=dtype)
    out = enc(pa.table({"text_hash": [str(i) for i in range(len(TEXTS))], "text": TEXTS}))
    return np.stack(out.column("embedding").to_pylist())


def test_cuda_bf16_matches_cpu_fp32():
    gpu = _vectors("cuda", "auto")  # bf16 on GPUs that support it
    cpu = _vectors("cpu", "float32")
    assert (gpu * cpu).sum(axis=1).min() > 0.999


def test_pipeline_puts_actors_on_the_gpu(ray_session):
    from llmrec_ray.config import EncodeConfig
    from llmrec_ray.encode import encode_texts
    from llmrec_ray.text_model import encoder_key, text_hashes

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the test Ray instance sees no GPU")
    cfg = EncodeConfig(cpus_per_actor=1)
    rows = pa.table({"text": TEXTS, "text_hash": text_hashes(pa.array(TEXTS), encoder_key(cfg))})
    vectors, stats = encode_texts(rows, cfg)
    assert vectors.num_rows == 4 and stats["encoded"] == 4
