;; State made by iot_init that only init makes: init grows memory from 1 to 3 pages, copies
;; config "greeting" to 0x20000 (past the first page), keeps its length in a global that is
;; not exported and sets an f64 global that is not exported either. Per input it emits the
;; greeting followed by one digit, trunc(scale * 2) (scale is 2.5 after init, so "5"); a
;; payload starting with '!' traps. A guest that did not get init's state emits something else.
;; The line ";;INIT-EXTRA" is where tests put more calls into init.
(module
  (import "iot" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (import "iot" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 64) "greeting")                     ;; 8 bytes
  (global $len (mut i32) (i32.const 0))
  (global $scale (mut f64) (f64.const 0))
  (global $heap (mut i32) (i32.const 0x30000))
  (func (export "iot_abi_version") (result i32) (i32.const 1))
  (func (export "iot_init") (result i32)
    (local $n i32)
    (if (i32.eq (memory.grow (i32.const 2)) (i32.const -1)) (then (return (i32.const 1))))
    (local.set $n (call $config_get (i32.const 64) (i32.const 8) (i32.const 0x20000) (i32.const 64)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 2))))
    (global.set $len (local.get $n))
    (global.set $scale (f64.const 2.5))
    ;;INIT-EXTRA
    (i32.const 0))
  (func (export "iot_alloc") (param $n i32) (result i32)
    (local $p i32) (local $need i32)
    global.get $heap local.set $p
    local.get $p local.get $n i32.add local.set $need
    (block $ok
      (loop $g
        local.get $need memory.size i32.const 65536 i32.mul i32.le_u br_if $ok
        i32.const 1 memory.grow i32.const -1 i32.eq (if (then i32.const 0 return))
        br $g))
    local.get $need global.set $heap
    local.get $p)
  (func (export "iot_process") (param $in i32) (param $len_in i32) (param $count i32)
        (param $out i32) (param $cap i32) (result i32)
    (local $i i32) (local $p i32) (local $tl i32) (local $pl i32) (local $w i32) (local $pay i32)
    local.get $in local.set $p
    local.get $out i32.const 8 i32.add local.set $w
    (block $done (loop $l
      local.get $i local.get $count i32.ge_u br_if $done
      local.get $p i32.load offset=8 local.set $tl
      local.get $p i32.load offset=12 local.set $pl
      local.get $p i32.const 16 i32.add local.get $tl i32.add local.set $pay
      local.get $pl (if (then local.get $pay i32.load8_u i32.const 33 i32.eq (if (then unreachable))))
      ;; record: 16-byte header, then the greeting and the digit
      local.get $w i32.const 17 i32.add global.get $len i32.add
      local.get $out local.get $cap i32.add i32.gt_u (if (then i32.const 1 return))
      local.get $w local.get $i i32.store
      local.get $w i32.const 0 i32.store offset=4
      local.get $w i32.const 0 i32.store offset=8
      local.get $w global.get $len i32.const 1 i32.add i32.store offset=12
      local.get $w i32.const 16 i32.add i32.const 0x20000 global.get $len memory.copy
      local.get $w i32.const 16 i32.add global.get $len i32.add
      global.get $scale f64.const 2 f64.mul i32.trunc_f64_s i32.const 48 i32.add i32.store8
      local.get $w i32.const 17 i32.add global.get $len i32.add local.set $w
      local.get $out local.get $w local.get $out i32.sub i32.const 8 i32.sub i32.store
      local.get $i i32.const 1 i32.add local.set $i
      local.get $out local.get $i i32.store offset=4
      local.get $pay local.get $pl i32.add local.set $p
      br $l))
    i32.const 0))
