;; missing-import-p1.wasm: a WASI p1 module that also imports functions no host provides, so loading it must
;; fail naming both (spin.frobnicate and env.not_provided).
(module
  (import "spin" "frobnicate" (func $frobnicate (param i32) (result i32)))
  (import "env" "not_provided" (func $not_provided))
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (func (export "_start") (drop (call $frobnicate (i32.const 1))) (call $not_provided))
)
