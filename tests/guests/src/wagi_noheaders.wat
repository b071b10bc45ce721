;; wagi-noheaders.wasm: prints a body without any CGI header block, which a WAGI host must answer with a 500
;; (and a log line saying why) rather than pass through.
(module
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "just a body, no headers\n\00")
  (func (export "_start")
    (call $write_cstr (i32.const 1) (i32.const 1024)))
)
