;; wagi-status.wasm: a WAGI module answering with an explicit CGI status and a custom header, CRLF line ends:
;; "Status: 201 Created", "X-Custom: wagi", "Content-Type: text/plain", empty line, "created\n".
(module
  ;; @include p1_imports.wat
  ;; @include p1_lib.wat
  (data (i32.const 1024) "Status: 201 Created\0d\0aX-Custom: wagi\0d\0aContent-Type: text/plain\0d\0a\0d\0acreated\n\00")
  (func (export "_start")
    (call $write_cstr (i32.const 1) (i32.const 1024)))
)
