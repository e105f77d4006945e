"""The baselines of the per-message section on other runtimes: the same module through
wasmtime-py's public API (one call per message) and on pywasm (an interpreter in Python).

Each is a small host of ABI v1 of its own (it provides the iot.config_get import itself) and
nothing in it is about timing; per_message.py drives both. wasmtime and pywasm are imported
when one is built.
"""

from __future__ import annotations

import struct

IN_RECORD = struct.Struct("<qII")
OUT_RECORD = struct.Struct("<IIII")
OUT_HEADER = struct.Struct("<II")


# -- baselines on other runtimes -------------------------------------------------------------
class PublicWasmtime:
    """The same module through wasmtime-py's public API, one iot_process call per message."""

    def __init__(self, wasm: bytes, config: dict[str, str]):
        import wasmtime

        engine = wasmtime.Engine()  # defaults: no fuel, no epoch checks (favours this baseline)
        module = wasmtime.Module(engine, wasm)
        store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        i32 = wasmtime.ValType.i32()
        for imp in module.imports:
            if (imp.module, imp.name) == ("iot", "config_get"):
                linker.define_func("iot", "config_get", wasmtime.FuncType([i32] * 4, [i32]),
                                   self._config_get, access_caller=True)
            else:
                raise RuntimeError(f"baseline provides no import {imp.module}.{imp.name}")
        self.config = config
        instance = linker.instantiate(store, module)
        ex = instance.exports(store)
        self.store = store
        self.mem = ex["memory"]
        self.process_fn = ex["iot_process"]
        for hook in ("_initialize", "iot_init"):
            if hook in ex:
                ex[hook](store)
        assert ex["iot_abi_version"](store) == 1
        self.cap = 64 * 1024
        self.in_ptr = ex["iot_alloc"](store, self.cap)
        self.out_ptr = ex["iot_alloc"](store, self.cap)
        assert self.in_ptr and self.out_ptr

    def _config_get(self, caller, kp, kn, vp, vcap):
        mem = caller["memory"]
        value = self.config.get(bytes(mem.read(caller, kp, kp + kn)).decode())
        if value is None:
            return -1
        data = value.encode()
        if len(data) <= vcap:
            mem.write(caller, data, vp)
        return len(data)

    def run(self, batch):
        store, mem, call = self.store, self.mem, self.process_fn
        in_ptr, out_ptr, cap = self.in_ptr, self.out_ptr, self.cap
        zero = bytes(8)
        pack, unpack, unpack_rec = IN_RECORD.pack, OUT_HEADER.unpack, OUT_RECORD.unpack_from
        passed, rejected = [], []
        for i, m in enumerate(batch):
            topic = m.topic.encode()
            record = pack(m.timestamp_ms, len(topic), len(m.payload)) + topic + m.payload
            mem.write(store, record, in_ptr)
            mem.write(store, zero, out_ptr)
            rc = call(store, in_ptr, len(record), 1, out_ptr, cap)
            used, done = unpack(mem.read(store, out_ptr, out_ptr + 8))
            if rc != 0 or done != 1:
                raise RuntimeError(f"iot_process returned {rc}, inputs_done {done}")
            if used:
                body = mem.read(store, out_ptr + 8, out_ptr + 8 + used)
                _, kind, tl, pl = unpack_rec(body, 0)
                if kind == 0:
                    passed.append(bytes(body[16 + tl:16 + tl + pl]))
                else:
                    rejected.append(i)
        return passed, rejected


class Pywasm:
    """The same module on pywasm (a WebAssembly interpreter written in Python), batch ABI."""

    def __init__(self, wasm: bytes, config: dict[str, str]):
        import io

        import pywasm

        self.config = config
        core = pywasm.core
        rt = core.Runtime()
        desc = core.ModuleDesc.from_reader(io.BytesIO(wasm))
        i32 = core.ValType.i32()
        for imp in desc.imps:
            if (imp.module, imp.name) == ("iot", "config_get"):
                rt.imports.setdefault("iot", {})["config_get"] = rt.allocate_func_host(
                    core.FuncType([i32] * 4, [i32]), self._config_get)
            else:
                raise RuntimeError(f"baseline provides no import {imp.module}.{imp.name}")
        self.rt = rt
        self.inst = rt.instance(desc)
        self.mem = rt.exported_memory(self.inst, "memory")
        names = {e.name for e in self.inst.exps}
        for hook in ("_initialize", "iot_init"):
            if hook in names:
                rt.invocate(self.inst, hook, [])
        assert rt.invocate(self.inst, "iot_abi_version", []) == [1]
        self.cap = 256 * 1024
        self.in_ptr = rt.invocate(self.inst, "iot_alloc", [self.cap])[0]
        self.out_ptr = rt.invocate(self.inst, "iot_alloc", [self.cap])[0]
        assert self.in_ptr > 0 and self.out_ptr > 0

    def _config_get(self, machine, args):
        kp, kn, vp, vcap = (a & 0xFFFFFFFF for a in args)
        mem = machine.store.mems[machine.stack.frame[-1].module.mems[0]]
        value = self.config.get(bytes(mem.data[kp:kp + kn]).decode())
        if value is None:
            return [-1]
        data = value.encode()
        if len(data) <= vcap:
            mem.data[vp:vp + len(data)] = data
        return [len(data)]

    def run(self, batch):
        from iotwasm.engine.abi_v1 import pack_inputs, parse_outputs

        data = pack_inputs(batch)
        assert len(data) <= self.cap
        mem = self.mem
        mem.data[self.in_ptr:self.in_ptr + len(data)] = data
        mem.data[self.out_ptr:self.out_ptr + 8] = bytes(8)
        rc = self.rt.invocate(self.inst, "iot_process",
                              [self.in_ptr, len(data), len(batch), self.out_ptr, self.cap])[0]
        used, done = OUT_HEADER.unpack(bytes(mem.data[self.out_ptr:self.out_ptr + 8]))
        if rc != 0 or done != len(batch):
            raise RuntimeError(f"iot_process returned {rc}, inputs_done {done} of {len(batch)}")
        body = bytes(mem.data[self.out_ptr + 8:self.out_ptr + 8 + used])
        outs, errs = parse_outputs(body, len(batch), done, 0)
        return [o.payload for o in outs], [i for i, _ in errs]
