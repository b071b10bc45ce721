;; loop.wasm: WASI p1 command that prints "looping" and then spins forever without calling the host: only an
;; epoch interrupt (LoadedApp.interrupt) can stop it.
(module
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "looping\n\00")
  (func (export "_start")
    (local $n i64)
    (call $write_cstr (i32.const 1) (i32.const 1024))
    (loop $forever
      (local.set $n (i64.add (local.get $n) (i64.const 1)))
      (br $forever)))
)
