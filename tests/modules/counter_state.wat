;; Keeps a counter in its own linear memory (at address 16) and emits its new value, in ASCII
;; decimal, once per input: 1, 2, 3, ... The counter lives as long as the instance does, so
;; a restart, a recycled instance after a trap, or another replica starts again from 1.
;; State that must survive belongs in kv (see host_calls.wat).
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
  ;; Writes v in decimal at dst and returns the length. Digits come out last first, so they
  ;; are built backwards in the scratch bytes [38, 48) and then copied.
  (func $utoa (param $v i32) (param $dst i32) (result i32)
    (local $t i32)
    (local.set $t (i32.const 48))
    (loop $digit
      (local.set $t (i32.sub (local.get $t) (i32.const 1)))
      (i32.store8 (local.get $t) (i32.add (i32.const 0x30) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (memory.copy (local.get $dst) (local.get $t) (i32.sub (i32.const 48) (local.get $t)))
    (i32.sub (i32.const 48) (local.get $t)))
  (func (export "iot_process") (param $in i32) (param $in_len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $i i32) (local $used i32) (local $rec i32) (local $n i32) (local $next i32)
    (if (i32.lt_u (local.get $cap) (i32.const 8)) (then (return (i32.const -2))))
    (i64.store (local.get $out) (i64.const 0))
    (block $done
      (loop $input
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)))
        ;; at most 10 digits: check the room before counting, so an input redone after
        ;; IOT_OUTPUT_FULL is not counted twice
        (if (i32.gt_u (i32.const 26) (i32.sub (i32.sub (local.get $cap) (i32.const 8)) (local.get $used)))
          (then (return (i32.const 1))))
        (local.set $next (i32.add (i32.load (i32.const 16)) (i32.const 1)))
        (i32.store (i32.const 16) (local.get $next))
        (local.set $n (call $utoa (local.get $next) (i32.add (local.get $rec) (i32.const 16))))
        (i32.store (local.get $rec) (local.get $i))
        (i32.store offset=4 (local.get $rec) (i32.const 0))
        (i32.store offset=8 (local.get $rec) (i32.const 0))
        (i32.store offset=12 (local.get $rec) (local.get $n))
        (local.set $used (i32.add (local.get $used) (i32.add (i32.const 16) (local.get $n))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (i32.store (local.get $out) (local.get $used))
        (i32.store offset=4 (local.get $out) (local.get $i))
        (br $input)))
    (i32.const 0)))
