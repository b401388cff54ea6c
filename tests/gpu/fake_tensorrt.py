"""A stand-in ``tensorrt`` module that records the builder calls build_engine.py makes, so
the call sequence (network, parser, profile, flags, timing cache) is tested on CPU. It
mirrors the documented TensorRT 10 Python API names only; it computes nothing."""
import types


def make(version="10.9.0", has_fp16=True, parse_ok=True, plan=b"PLAN-BYTES"):
    calls = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class _Tensor:
        def __init__(self, name, dtype="DataType.FLOAT"):
            self.name, self.dtype = name, dtype

    class Network:
        num_inputs, num_outputs = 2, 1

        def get_input(self, i):
            return _Tensor(["input_ids", "attention_mask"][i], "DataType.INT64")

        def get_output(self, i):
            return _Tensor("last_hidden_state")

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            calls.append(("OnnxParser",))

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Gather): unsupported"

    class TimingCache:
        def serialize(self):
            return b"TIMINGS"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            self._cache = TimingCache()
            return self._cache

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self._cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return plan

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", **({"FP16": "FP16", "BF16": "BF16"} if has_fp16 else {}))
    return trt


def add_runtime(trt, hidden_fn, profile=((1, 1), (1 << 30, 1 << 30))):
    """Give ``trt`` a Runtime whose engine writes ``hidden_fn(ids, mask)`` (numpy, float32
    (b, s, H)) to the output address on execute_async_v3: memory is host memory here (the
    backend's tensors are moved to CPU by the test), reached through ctypes like a device
    pointer would be by TensorRT. ``set_input_shape`` refuses (returns False, as TensorRT
    does) a shape outside ``profile`` = ((min rows, min seq), (max rows, max seq))."""
    import ctypes

    import numpy as np

    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT32="INT32", INT64="INT64", BF16="BF16")
    calls = trt.calls

    def view(ptr, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)

    class Context:
        def __init__(self):
            self.shapes, self.ptrs = {}, {}

        def set_input_shape(self, name, shape):
            (lo_b, lo_s), (hi_b, hi_s) = profile
            if not (lo_b <= shape[0] <= hi_b and lo_s <= shape[1] <= hi_s):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.ptrs[name] = ptr
            return True

        def execute_async_v3(self, stream):
            b, s = self.shapes["input_ids"]
            calls.append(("execute_async_v3", b, s))
            ids = view(self.ptrs["input_ids"], (b, s), np.int64)
            mask = view(self.ptrs["attention_mask"], (b, s), np.int64)
            hidden = hidden_fn(ids, mask)
            view(self.ptrs["last_hidden_state"], hidden.shape, np.float32)[...] = hidden
            return True

    class Engine:
        num_io_tensors = 3
        _names = ["input_ids", "attention_mask", "last_hidden_state"]

        def get_tensor_name(self, i):
            return self._names[i]

        def get_tensor_dtype(self, name):
            return "FLOAT" if name == "last_hidden_state" else "INT64"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            return Engine()

    trt.Runtime = Runtime
    return trt
