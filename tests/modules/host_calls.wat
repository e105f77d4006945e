;; Uses the iot host functions, so it needs capabilities log, clock, random, kv, config and
;; metrics. Per input it:
;;   - reads the counter kept in kv under "count" (ASCII decimal; absent = 0), adds one and
;;     writes it back: unlike counter_state.wat this survives instance replacement
;;   - calls now_ms, random_fill, config_get("label") and metric(counter "inputs", 1)
;;   - logs one line at level info
;;   - emits the new counter value in ASCII decimal
(module
  (import "iot" "log" (func $log (param i32 i32 i32)))
  (import "iot" "now_ms" (func $now_ms (result i64)))
  (import "iot" "random_fill" (func $random_fill (param i32 i32)))
  (import "iot" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "iot" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "iot" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "iot" "metric" (func $metric (param i32 i32 i32 f64)))
  (memory (export "memory") 1)
  ;; constant strings
  (data (i32.const 64) "count")                         ;; 5 bytes
  (data (i32.const 80) "host_calls: input counted")     ;; 25 bytes
  (data (i32.const 112) "inputs")                       ;; 6 bytes
  (data (i32.const 128) "label")                        ;; 5 bytes
  ;; scratch: [38,48) utoa, [256,272) kv value, [288,296) random, [320,384) config value
  (global $last_time (mut i64) (i64.const 0))
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
  ;; The counter stored in kv, 0 when absent or unreadable.
  (func $load_count (result i32)
    (local $n i32) (local $k i32) (local $v i32) (local $c i32)
    (local.set $n (call $kv_get (i32.const 64) (i32.const 5) (i32.const 256) (i32.const 16)))
    (if (i32.or (i32.lt_s (local.get $n) (i32.const 1)) (i32.gt_s (local.get $n) (i32.const 10)))
      (then (return (i32.const 0))))
    (block $end
      (loop $digit
        (br_if $end (i32.ge_u (local.get $k) (local.get $n)))
        (local.set $c (i32.sub (i32.load8_u (i32.add (i32.const 256) (local.get $k))) (i32.const 0x30)))
        (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i32.const 0))))
        (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10)) (local.get $c)))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $digit)))
    (local.get $v))
  (func (export "iot_process") (param $in i32) (param $in_len i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $i i32) (local $used i32) (local $rec i32) (local $n i32)
    (if (i32.lt_u (local.get $cap) (i32.const 8)) (then (return (i32.const -2))))
    (i64.store (local.get $out) (i64.const 0))
    (block $done
      (loop $input
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $rec (i32.add (i32.add (local.get $out) (i32.const 8)) (local.get $used)))
        ;; room first: an input redone after IOT_OUTPUT_FULL must not be counted twice
        (if (i32.gt_u (i32.const 26) (i32.sub (i32.sub (local.get $cap) (i32.const 8)) (local.get $used)))
          (then (return (i32.const 1))))
        (local.set $n (call $utoa (i32.add (call $load_count) (i32.const 1))
                                   (i32.add (local.get $rec) (i32.const 16))))
        ;; kv quota exceeded: give up on this input with IOT_ERR_INTERNAL
        (if (call $kv_set (i32.const 64) (i32.const 5) (i32.add (local.get $rec) (i32.const 16)) (local.get $n))
          (then (return (i32.const -2))))
        (global.set $last_time (call $now_ms))
        (call $random_fill (i32.const 288) (i32.const 8))
        (drop (call $config_get (i32.const 128) (i32.const 5) (i32.const 320) (i32.const 64)))
        (call $metric (i32.const 0) (i32.const 112) (i32.const 6) (f64.const 1))
        (call $log (i32.const 1) (i32.const 80) (i32.const 25))
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
