;; sleep.wasm: WASI p1 command that prints "sleeping" and blocks in ONE host call (poll_oneoff on a one-hour
;; monotonic clock timeout). Wasm code never runs during the wait, so an epoch interrupt cannot stop it until the
;; call returns: the guest that "ignores SIGTERM" and needs SIGKILL.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "sleeping\n\00")
  (data (i32.const 1100) "woke up\n\00")
  (func (export "_start")
    (call $write_cstr (i32.const 1) (i32.const 1024))
    ;; subscription at 256: userdata u64 @0, tag u8 @8 (0 = clock), clock id u32 @16 (1 = monotonic),
    ;; timeout u64 @24 (ns, relative), precision u64 @32, flags u16 @40; event out at 512, count at 600
    (i64.store (i32.const 256) (i64.const 42))
    (i32.store8 (i32.const 264) (i32.const 0))
    (i32.store (i32.const 272) (i32.const 1))
    (i64.store (i32.const 280) (i64.const 3600000000000))
    (i64.store (i32.const 288) (i64.const 0))
    (i32.store16 (i32.const 296) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 600)))
    (call $write_cstr (i32.const 1) (i32.const 1100)))
)
