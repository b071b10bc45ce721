;; trap.wasm: WASI p1 command that prints a line and then executes `unreachable`.
(module
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "about to trap\n\00")
  (func (export "_start")
    (call $write_cstr (i32.const 1) (i32.const 1024))
    (unreachable))
)
