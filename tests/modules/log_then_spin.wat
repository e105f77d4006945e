;; Hostile, and says so: iot_process logs "spinning" through iot.log, then never returns.
;; Only the time limit (epoch) or fuel stops it. The log line tells a test that the call is
;; provably running. Needs capability log.
(module
  (import "iot" "log" (func $log (param i32 i32 i32)))
  (data (i32.const 64) "spinning")
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
  (func (export "iot_process") (param i32 i32 i32 i32 i32) (result i32)
    (call $log (i32.const 1) (i32.const 64) (i32.const 8))
    (loop $forever (br $forever))
    (i32.const 0)))
