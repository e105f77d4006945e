;; Hostile: unbounded recursion in iot_process. Each frame keeps a few locals live so the
;; wasm stack fills quickly; stopped by the container's stack limit.
(module
  (memory (export "memory") 1)
  (func (export "iot_abi_version") (result i32) (i32.const 1))
  ;; Bump allocator over the memory above 4096; grows memory on demand, 0 when it cannot.
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "iot_alloc") (param $size i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 15)) (i32.const -16)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $size))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.shr_u
                      (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                      (i64.const 16))))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $p))
  (func $down (param $n i32) (result i32)
    (local $a i64) (local $b i64) (local $c i64)
    (local.set $a (i64.extend_i32_u (local.get $n)))
    (local.set $b (i64.mul (local.get $a) (i64.const 3)))
    (local.set $c (i64.add (local.get $b) (local.get $a)))
    ;; not a tail call: the result is used after the call returns
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1)))
             (i32.wrap_i64 (i64.add (local.get $c) (local.get $b)))))
  (func (export "iot_process") (param i32 i32 i32 i32 i32) (result i32)
    (drop (call $down (i32.const 0)))
    (i32.const 0)))
