"""The megatron case without megatron-core (which CI does not install, and which needs CUDA):
its module imports, its flags, the mapping of our Llama configs onto megatron's TransformerConfig
and GPTModel arguments, and the clear refusals of its real entry point. The training itself runs
only on the GPU lane (docs/workloads.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from mlcluster_workloads import cases, megatron_gpt
from mlcluster_workloads.llama import CONFIGS
from workload_helpers import child_env


def entry_point(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The case's real entry point in a fresh process, CUDA hidden, megatron not importable."""
    code = (
        "import sys\n"
        "sys.modules['megatron'] = None  # as in CI, whatever this machine has installed\n"
        "from mlcluster_workloads import megatron_gpt\n"
        f"megatron_gpt.main({list(flags)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**child_env(), "CUDA_VISIBLE_DEVICES": "", **(env or {})},
        timeout=120,
        check=False,
    )


def test_the_module_imports_without_megatron():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['megatron'] = None\n"
            "from mlcluster_workloads import megatron_gpt\n"
            "print(megatron_gpt.parse_args([]).config)",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "tiny"


def test_the_registry_entry_runs_the_module_on_gpus_only():
    case = cases.get("megatron")
    assert (case.module, case.launcher, case.needs_gpu, case.runnable) == (
        "megatron_gpt", "torchrun", True, False,
    )  # fmt: skip
    assert case.cpu_substitute == "fsdp" and not cases.get("fsdp").needs_gpu
    args = megatron_gpt.parse_args(list(case.gpu_args))
    assert (args.config, args.steps, args.tp, args.pp, args.microbatches) == ("1b", 50, 1, 1, 1)


def test_flags():
    args = megatron_gpt.parse_args(
        ["--config", "8b", "--seq-len", "4096", "--batch-size", "2", "--tp", "4", "--pp", "2",
         "--microbatches", "8", "--dtype", "fp32", "--attention", "local", "--dist-timeout", "60"]
    )  # fmt: skip
    assert (args.config, args.seq_len, args.batch_size, args.tp, args.pp) == ("8b", 4096, 2, 4, 2)
    assert (args.microbatches, args.dtype, args.attention, args.dist_timeout) == (
        8, "fp32", "local", 60,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        megatron_gpt.parse_args(["--microbatches", "0"])
    assert megatron_gpt.resolve_dtype("auto", cuda=True) == torch.bfloat16
    assert megatron_gpt.resolve_dtype("auto", cuda=False) == torch.float32
    assert megatron_gpt.resolve_dtype("fp32", cuda=True) == torch.float32


def test_the_1b_config_maps_onto_megatron_llama_style():
    config = CONFIGS["1b"]
    kwargs = megatron_gpt.transformer_config_kwargs(config, tp=2, pp=4)
    assert {k: kwargs[k] for k in (
        "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
        "ffn_hidden_size", "layernorm_epsilon",
    )} == {
        "num_layers": 16, "hidden_size": 2048, "num_attention_heads": 32, "num_query_groups": 8,
        "kv_channels": 64, "ffn_hidden_size": 8192, "layernorm_epsilon": 1e-5,
    }  # fmt: skip
    assert kwargs["gated_linear_unit"] and kwargs["activation_func"] is F.silu  # SwiGLU
    assert kwargs["normalization"] == "RMSNorm"
    assert not kwargs["add_bias_linear"] and not kwargs["add_qkv_bias"]
    assert kwargs["hidden_dropout"] == kwargs["attention_dropout"] == 0.0
    assert (kwargs["tensor_model_parallel_size"], kwargs["pipeline_model_parallel_size"]) == (2, 4)
    assert kwargs["bf16"] and kwargs["params_dtype"] == kwargs["pipeline_dtype"] == torch.bfloat16
    assert not kwargs["use_cpu_initialization"] and not kwargs["sequence_parallel"]
    # nothing that needs Apex or Transformer Engine
    assert not any(kwargs[k] for k in kwargs if k.endswith("_fusion"))
    fp32 = megatron_gpt.transformer_config_kwargs(config, dtype=torch.float32)
    assert not fp32["bf16"] and fp32["params_dtype"] == torch.float32

    model = megatron_gpt.gpt_model_kwargs(config, seq_len=2048)
    assert model == {
        "vocab_size": 128256, "max_sequence_length": 2048, "position_embedding_type": "rope",
        "rotary_base": 500000, "rotary_percent": 1.0,
        "share_embeddings_and_output_weights": True, "parallel_output": True,
    }  # fmt: skip
    assert not megatron_gpt.gpt_model_kwargs(CONFIGS["8b"], 4096)[
        "share_embeddings_and_output_weights"
    ]


def test_parallel_layout_and_model_split():
    assert megatron_gpt.parallel_layout(16, 2, 4) == 2
    assert megatron_gpt.parallel_layout(1, 1, 1) == 1
    with pytest.raises(SystemExit, match=r"--tp 2 x --pp 3 = 6 ranks .* world size 8"):
        megatron_gpt.parallel_layout(8, 2, 3)
    with pytest.raises(SystemExit, match="at least 1"):
        megatron_gpt.parallel_layout(8, 0, 1)
    megatron_gpt.check_model_split(CONFIGS["1b"], 8, 16)
    with pytest.raises(SystemExit, match=r"n_kv_heads 4 by --tp 8.*n_layers 2 by --pp 4"):
        megatron_gpt.check_model_split(CONFIGS["tiny"], 8, 4)


def test_the_entry_point_refuses_without_cuda_naming_why():
    proc = entry_point("--config", "tiny", "--steps", "2")
    assert proc.returncode == 1
    assert "megatron-core needs CUDA: " in proc.stderr
    assert "run the fsdp case instead" in proc.stderr
    assert proc.stdout == ""
    proc = entry_point("--device", "cpu")
    assert proc.returncode == 1 and "megatron-core needs CUDA: " in proc.stderr
    assert "(--device cpu)" in proc.stderr


def test_the_entry_point_refuses_a_layout_that_does_not_divide_the_world():
    proc = entry_point("--tp", "2", "--pp", "2", env={"WORLD_SIZE": "6"})
    assert proc.returncode == 1
    assert "--tp 2 x --pp 2 = 4 ranks per model replica must divide the world size 6" in (
        proc.stderr
    )
